"""The `hf-clf` command line, importable as `hf_clf_ext.cli` (and runnable as `python -m hf_clf_ext.cli`).

It lives in the top-level module `hf_clf_cli`, outside this package, so that help and argument errors answer
without importing torch (importing `hf_clf_ext` registers the Auto classes, which does).
"""

import sys

from hf_clf_cli import (APPROACHES, COMMANDS, distill, evaluate, export, fail, main, predict,  # noqa: F401
                        train, tune)

if __name__ == "__main__":
    sys.exit(main())
