"""Re-execute a failed `scene_job` run from failure, as the UI's "Re-execute from failure" does.

    python -m scene_pipeline_tests.reexecute_run RUN_ID

Uses the instance at $DAGSTER_HOME and the same reconstructable job as
`scene_pipeline.cli.instance.execute_scene_job` (multiprocess executor), with the parent run's tags
(`dagster/partition` included) and run config. Runs in its own process so that the step
processes inherit this environment (a forkserver started earlier by a test process would
not). Writes one JSON line: {"run_id": ..., "success": ...}.
"""

from __future__ import annotations

import json
import os
import sys


def main(run_id: str) -> int:
    from dagster import DagsterInstance, ReexecutionOptions, execute_job
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from scene_pipeline.constants import SCENE_JOB_NAME

    with DagsterInstance.get() as instance:
        parent = instance.get_run_by_id(run_id)
        assert parent is not None, run_id
        job = ReconstructableRepository.for_module(
            "scene_pipeline.definitions", "defs", working_directory=os.getcwd()
        ).get_reconstructable_job(SCENE_JOB_NAME)
        with execute_job(
            job,
            instance=instance,
            reexecution_options=ReexecutionOptions.from_failure(run_id, instance),
            tags={k: v for k, v in parent.tags.items() if not k.startswith("dagster/")}
            | {"dagster/partition": parent.tags["dagster/partition"]},
            raise_on_error=False,
        ) as result:
            sys.stdout.write(json.dumps({"run_id": result.run_id, "success": result.success}))
            sys.stdout.write("\n")
            return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
