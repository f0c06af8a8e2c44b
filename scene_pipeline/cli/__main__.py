"""`python -m scene_pipeline.cli`: the same as `scene-pipeline`."""

import sys

from scene_pipeline.cli import main

sys.exit(main())
