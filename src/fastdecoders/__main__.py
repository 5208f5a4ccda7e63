import sys

from fastdecoders.cli import main

sys.exit(main())
