"""`python -m faultllm ...` is `faultllm ...`."""

import sys

from faultllm.cli import main

sys.exit(main())
