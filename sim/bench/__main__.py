# SPDX-License-Identifier: BSD-2-Clause
import sys

from . import main

sys.exit(main())
