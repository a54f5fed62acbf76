"""gpt2_encode.py --vocab DIR --input F --output F [--add_bos] [--add_eos]: text jsonl -> GPT-2 ids."""

from loranlg.encode import encode_main
from loranlg.errors import run_cli


def main(argv=None):
    return encode_main(argv)


if __name__ == "__main__":
    run_cli(main)
