"""``python -m stalk_workers`` is the ``stalk`` command (used where the script is not on PATH)."""

from stalk_workers.cli import main

main()
