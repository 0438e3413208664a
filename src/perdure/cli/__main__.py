"""``python -m perdure.cli``: the same as the ``perdure`` console script."""

from . import main

if __name__ == "__main__":
    main()
