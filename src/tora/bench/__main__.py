"""``python -m tora.bench``."""

from tora.bench.run import main

if __name__ == "__main__":
    main()
