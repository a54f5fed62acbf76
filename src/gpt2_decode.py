"""Turn gpt2_beam.py's token ids into the reference and prediction files of the evaluators."""

from loranlg import flags
from loranlg.decode import FILTERS, REF_TYPES, decode_files
from loranlg.errors import run_cli


def parse_args(argv):
    parser = flags.Parser(description=__doc__)
    parser.add_argument("--vocab", required=True,
                        help="directory of the GPT-2 vocabulary (encoder.json + vocab.bpe, or vocab.json + merges.txt)")
    parser.add_argument("--sample_file", required=True,
                        help="gpt2_beam.py's output: one {\"id\": line index in --input_file, \"predict\": [token "
                             "ids]} a line")
    parser.add_argument("--input_file", required=True,
                        help="the formatted jsonl the beam search ran on ({\"context\", \"completion\"} a line; "
                             "webnlg adds \"cate\"); its completions, grouped by identical context, are the references")
    parser.add_argument("--output_ref_file", required=True,
                        help="e2e: the reference file (each group's references one a line, a blank line after "
                             "each group); webnlg/dart: a directory that receives reference0..reference{ref_num-1}")
    parser.add_argument("--output_pred_file", required=True, help="the prediction file: one line per group")
    parser.add_argument("--ref_type", default="e2e", choices=REF_TYPES,
                        help="layout of the references: e2e (one file, blank-line separated groups) or "
                             "webnlg/dart (one file per reference position) (default: e2e)")
    parser.add_argument("--ref_num", type=flags.positive_int, default=4,
                        help="webnlg/dart: number of reference files; a group with fewer references repeats its "
                             "first one, extra references are dropped (default: 4)")
    parser.add_argument("--tokenize", action="store_true",
                        help="split every non-word character off, in references and predictions (after --lower)")
    parser.add_argument("--lower", action="store_true", help="lower-case references and predictions")
    parser.add_argument("--filter", default="all", choices=FILTERS,
                        help="keep all lines, or only those whose 'cate' is true (seen: categories seen in "
                             "training) or false (unseen); WebNLG (default: all)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from loranlg.tokenizer import GPT2BPE

    groups = decode_files(GPT2BPE(args.vocab), args.sample_file, args.input_file, args.output_ref_file,
                          args.output_pred_file, ref_type=args.ref_type, ref_num=args.ref_num,
                          tokenize=args.tokenize, lower=args.lower, category_filter=args.filter)
    print(f"wrote {groups} groups: references {args.output_ref_file}, predictions {args.output_pred_file}")


if __name__ == "__main__":
    run_cli(main)
