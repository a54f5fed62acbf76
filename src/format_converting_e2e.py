"""format_converting_e2e.py IN OUT: raw e2e data -> formatted JSON lines (see loranlg.formats)."""

from loranlg.errors import run_cli
from loranlg.formats import converter_main


def main(argv=None):
    return converter_main("e2e", argv)


if __name__ == "__main__":
    run_cli(main)
