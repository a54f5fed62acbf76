"""format_converting_dart.py IN OUT: raw dart data -> formatted JSON lines (see loranlg.formats)."""

from loranlg.errors import run_cli
from loranlg.formats import converter_main


def main(argv=None):
    return converter_main("dart", argv)


if __name__ == "__main__":
    run_cli(main)
