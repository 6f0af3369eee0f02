"""sacreBLEU and chrF as one offline `evaluate` module.

`evaluate.load("sacrebleu")` / `evaluate.load("chrf")` fetch their scripts from the Hugging Face Hub, so they fail
with the network unreachable. This folder is a self-contained module loaded by path,
`evaluate.load("training/metrics/sacrebleu")`, that calls the `sacrebleu` package (Post 2018, "A Call for Clarity
in Reporting BLEU Scores", arXiv 1804.08771; chrF: Popovic 2015, WMT) with its default settings: corpus BLEU with
the 13a tokenizer and exponential smoothing, and corpus chrF (character 6-grams, beta 2, no word n-grams).
Written here, not copied.

    bleu = BP * exp(sum_n 1/4 log p_n) * 100,   BP = min(1, exp(1 - ref_len / hyp_len))     (corpus level)
    chrf = (1 + beta^2) chrP chrR / (beta^2 chrP + chrR) * 100                               (corpus level)
"""

import datasets
import evaluate
import sacrebleu as sacrebleu_package

_DESCRIPTION = "Corpus sacreBLEU and chrF (the sacrebleu package's defaults) of predictions against references."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): one hypothesis per segment.
    references (list of list of str): the reference(s) of each segment; every segment needs the same number.
    word_order (int): chrF's word n-gram order (0: chrF, 2: chrF++). Default 0.
Returns:
    {"bleu": float, "chrf": float, "bleu_precisions": [p1..p4] (percent), "bleu_brevity_penalty": float,
     "sys_len": int, "ref_len": int, "bleu_signature": str, "chrf_signature": str}
"""


class SacreBLEUChrF(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Post 2018 (arXiv 1804.08771); Popovic 2015 (chrF)",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, word_order=0):
        if not predictions:
            raise ValueError("sacrebleu: no segments; BLEU and chrF are undefined")
        counts = {len(refs) for refs in references}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"sacrebleu: every segment needs the same number (>= 1) of references; got {sorted(counts)}")
        # sacrebleu takes one list per reference stream: streams[j][i] is reference j of segment i.
        streams = [[refs[j] for refs in references] for j in range(counts.pop())]
        bleu_metric = sacrebleu_package.BLEU()
        chrf_metric = sacrebleu_package.CHRF(word_order=word_order)
        bleu = bleu_metric.corpus_score(predictions, streams)
        chrf = chrf_metric.corpus_score(predictions, streams)
        return {
            "bleu": bleu.score, "chrf": chrf.score, "bleu_precisions": list(bleu.precisions),
            "bleu_brevity_penalty": bleu.bp, "sys_len": bleu.sys_len, "ref_len": bleu.ref_len,
            "bleu_signature": str(bleu_metric.get_signature()), "chrf_signature": str(chrf_metric.get_signature()),
        }
