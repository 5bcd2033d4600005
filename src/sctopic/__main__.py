"""Allow ``python -m sctopic`` (also what ``torchrun -m sctopic`` runs)."""
from sctopic.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
