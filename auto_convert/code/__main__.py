import sys

from auto_convert.code.cli import main

sys.exit(main())
