"""Emulated services for trying the whole pipeline without cloud keys:

    python -m scene_pipeline_tests.fakes

starts moto's S3 server (with a bucket), the fake KLING API and the fake OpenAI API on
127.0.0.1, prints the environment to export, and runs until Ctrl-C. In another shell, with
those variables exported, `dagster dev` runs the real S3, OpenAI and KLING code paths
against them (prompts and images are the fakes' own, not offline placeholders).
"""

import argparse
import os
import signal
import threading

import boto3
from moto.server import ThreadedMotoServer

from .kling import FakeKlingServer
from .openai import FakeOpenAIServer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scene_pipeline_tests.fakes")
    parser.add_argument("--bucket", default="scene-pipeline")
    parser.add_argument("--s3-port", type=int, default=5055)
    parser.add_argument("--kling-latency", type=float, default=3.0, help="seconds per task")
    parser.add_argument("--kling-limit", type=int, default=5, help="account concurrency limit")
    args = parser.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=args.s3_port, verbose=False)
    s3.start()
    endpoint = f"http://127.0.0.1:{args.s3_port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
        Bucket=args.bucket
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with (
        FakeKlingServer(
            task_latency_seconds=args.kling_latency, concurrency_limit=args.kling_limit
        ) as kling,
        FakeOpenAIServer() as openai,
    ):
        exports = {
            "S3_BUCKET_NAME": args.bucket,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
            "OPENAI_API_KEY": openai.api_key,
            "OPENAI_BASE_URL": openai.base_url,
            "KLING_ACCESS_KEY": kling.options.access_key,
            "KLING_SECRET_KEY": kling.options.secret_key,
            "KLING_API_BASE_URL": kling.url,
            "KLING_MAX_CONCURRENCY": str(args.kling_limit),
            "SCENE_PIPELINE_INBOX_INTERVAL_SECONDS": "5",
        }
        print("# emulated S3, KLING and OpenAI are up; export these in another shell:")
        for name, value in exports.items():
            print(f"export {name}={value}")
        print("# Ctrl-C stops them.", flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            print(
                f"KLING tasks accepted: {len(kling.tasks)}, most in flight: {kling.max_in_flight};"
                f" OpenAI calls: {dict(openai.calls)}"
            )
    s3.stop()


if __name__ == "__main__":
    main()
