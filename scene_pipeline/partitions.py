"""One partition per script: the script id is the partition key."""

from dagster import DynamicPartitionsDefinition

from scene_pipeline.constants import SCRIPT_PARTITIONS_NAME

script_partitions = DynamicPartitionsDefinition(name=SCRIPT_PARTITIONS_NAME)
