"""TER as pyter3 computes it (the TER of the WebNLG GenerationEval script), fast enough for a whole test set.

pyter3's `ter(hyp, ref)`: greedily apply the word shift (a block of the hypothesis that also occurs in the
reference, moved to where it occurs there) that lowers the Levenshtein distance to the reference most, while
one does; TER = (shifts + remaining word edit distance) / reference length. Ties between shifts go to pyter's
own order (it sorts the candidates and takes the last).

pyter spends 95% of its time in its dynamic-programming edit distance (about a minute for GenerationEval's
1,862-segment example). We run pyter's own shift search (`pyter._ter`), so the shifts and their ties are
pyter's by construction, and give it an exact word-level Levenshtein distance computed bit-parallel (Myers
1999, in Hyyrö's formulation): one row of the table per reference word, held as the bits of a Python int,
updated a hypothesis word at a time. The distances are the same integers, so the scores are the same floats.
"""

import pyter


class ReferenceDistance:
    """Levenshtein distance (insertions, deletions, substitutions of words, each 1) to one reference."""

    def __init__(self, ref_words):
        self.length = len(ref_words)
        self.all_rows = (1 << self.length) - 1
        self.last_row = 1 << (self.length - 1) if ref_words else 0
        self.positions = {}  # word -> bit mask of the reference positions that hold it
        for index, word in enumerate(ref_words):
            self.positions[word] = self.positions.get(word, 0) | (1 << index)

    def __call__(self, hyp_words):
        if not self.length:
            return len(hyp_words)
        plus, minus, distance = self.all_rows, 0, self.length  # vertical +1 / -1 deltas of the column
        for word in hyp_words:
            equal = self.positions.get(word, 0)
            vertical = equal | minus
            horizontal = (((equal & plus) + plus) ^ plus) | equal
            h_plus = minus | ~(horizontal | plus)
            h_minus = plus & horizontal
            if h_plus & self.last_row:
                distance += 1
            elif h_minus & self.last_row:
                distance -= 1
            h_plus = (h_plus << 1) | 1  # the first row grows by one per hypothesis word
            h_minus <<= 1
            plus = (h_minus | ~(vertical | h_plus)) & self.all_rows
            minus = h_plus & vertical & self.all_rows
        return distance


def ter(hyp_words, ref_words):
    """pyter.ter(hyp_words, ref_words), with the same result; the reference must not be empty."""
    hyp_words, ref_words = list(hyp_words), list(ref_words)
    if not ref_words:
        raise ValueError("TER of an empty reference is undefined (it divides by the reference length)")
    shift_search = getattr(pyter, "_ter", None)
    if shift_search is None:  # a pyter3 other than 0.3: its public function, slower, same definition
        return pyter.ter(hyp_words, ref_words)
    return shift_search(hyp_words, ref_words, ReferenceDistance(ref_words))
