"""`python -m vtrans_core compress ...` (same as `vtrans compress ...`)."""
import sys

from .cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] not in ("compress", "-h", "--help"):
        print("usage: python -m vtrans_core compress --model ... --data ... --budget flops:0.5 --output DIR",
              file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(args))
