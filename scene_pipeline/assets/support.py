"""What the steps share: the retry policy, the script's lease, and the tools of rendering."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dagster import Backoff, Failure, Jitter, OpExecutionContext, RetryPolicy

from scene_pipeline.constants import TAG_LEASE
from scene_pipeline.core import leases
from scene_pipeline.core.outcomes import Attempt
from scene_pipeline.core.rendering import Tools
from scene_pipeline.providers.errors import TransientProviderError
from scene_pipeline.resources.bucket import BucketResource
from scene_pipeline.resources.providers import ImageMakerResource, PromptWriterResource
from scene_pipeline.resources.slots import PoolSlots
from scene_pipeline.storage import Bucket, StorageError

# The second and last owner of retries (the first is each provider's client): what the
# client gave up on is tried again twice, 10 s and then about 20 s later.
MAX_RETRIES = 2
RETRY_POLICY = RetryPolicy(
    max_retries=MAX_RETRIES, delay=10, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS
)
# How long a run waits for a script that another holder (a CLI run) is working on.
LEASE_WAIT_SECONDS = 900
LEASE_POLL_SECONDS = 5


@contextmanager
def our_errors_fail_loudly() -> Iterator[None]:
    """Only provider and storage trouble is worth a retry (RetryPolicy); anything else is a bug
    of ours: it fails the step (and the run) at once, with its traceback as the cause."""
    try:
        yield
    except (TransientProviderError, StorageError, Failure):
        raise
    except Exception as err:
        raise Failure(
            description=f"internal error: {type(err).__name__}: {err}"[:500],
            allow_retries=False,
        ) from err


def run_has_ended(instance: Any, run_id: str) -> bool:
    """A run of this instance that has finished (failed, canceled, succeeded) holds nothing."""
    record = instance.get_run_record_by_id(run_id)
    return record is not None and record.dagster_run.is_finished


def attempt_of(context: OpExecutionContext) -> Attempt:
    return Attempt(
        run_id=context.run_id, retry_number=context.retry_number, max_retries=MAX_RETRIES
    )


def lease_token(context: OpExecutionContext) -> str:
    """A CLI run works under the CLI's lease (tag); any other run under its root run id, so
    that its re-executions hold the same lease."""
    return context.run.tags.get(TAG_LEASE) or context.run.root_run_id or context.run_id


@contextmanager
def script_step(
    context: OpExecutionContext, bucket: Bucket, script_id: str, *, first: bool = False
) -> Iterator[None]:
    """The frame of every step's work: hold (or renew) the script's lease, renewing it in the
    background, and let our own errors fail the step at once (`our_errors_fail_loudly`).

    `first` (the plan step): wait for another holder to finish instead of failing at once,
    and give the lease up again when the step fails (nothing else of the run will work).
    A lease held by a run of this instance that has ended is taken over at once.
    """
    token = lease_token(context)
    launched_by = context.run.tags.get("scene_pipeline/launched_by", "ui")
    holder = f"run {context.run_id[:8]} ({launched_by})"
    # A CLI run works under the CLI's lease; any other run names itself in the lease.
    run_id = None if TAG_LEASE in context.run.tags else token

    def ended(lease: leases.Lease) -> bool:
        return lease.run_id is not None and run_has_ended(context.instance, lease.run_id)

    deadline = time.monotonic() + (LEASE_WAIT_SECONDS if first else 0)
    while True:
        got = leases.acquire(bucket, script_id, token, holder, run_id=run_id, finished=ended)
        if isinstance(got, leases.Lease):
            break
        if time.monotonic() >= deadline:
            raise Failure(description=got.message(), allow_retries=False)
        context.log.info(f"{got.message()}; waiting")
        time.sleep(LEASE_POLL_SECONDS)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(leases.RENEW_EVERY_SECONDS):
            got = leases.acquire(bucket, script_id, token, holder, run_id=run_id)
            if isinstance(got, leases.Busy):
                context.log.error(f"lost the script's lease: {got.message()}")
                return

    keeper = threading.Thread(target=renew, name="lease-keeper", daemon=True)
    keeper.start()
    try:
        with our_errors_fail_loudly():
            yield
    except BaseException:
        if first:
            leases.release(bucket, script_id, token)
        raise
    finally:
        stop.set()


def tools(
    context: OpExecutionContext,
    bucket: BucketResource,
    prompt_writer: PromptWriterResource,
    image_maker: ImageMakerResource,
) -> Tools:
    return Tools(
        bucket=bucket.get_bucket(),
        writer=prompt_writer.get_writer,
        maker=image_maker.get_maker(),
        slots=PoolSlots(
            context.instance,
            context.run_id,
            context.get_step_execution_context().step.key,
            priority=int(context.run.tags.get("dagster/priority", "0") or 0),
        ),
        prompt_cap=prompt_writer.max_prompt_chars,
    )
