#!/usr/bin/env python3
"""Compare sluice::pii with Microsoft Presidio's pattern recognizers on the same corpus.

Offline setup (no spaCy model download possible here): Presidio's AnalyzerEngine normally
loads `en_core_web_lg`, which is fetched from the internet and fails offline. We instead run it
with a tokenizer-only NLP engine (a subclass of Presidio's NoOpNlpEngine that splits words with a
regex and lower-cases them as "lemmas"), so Presidio's *pattern recognizers* and their context
word enhancer work, and the NER recognizer (SpacyRecognizer) is removed. That is the fair
"regex + validators + context" comparison; Presidio's NER path (names, locations) is out of scope.

Usage: python3 scripts/presidio_compare.py [corpus.jsonl] [--ours ours.json]
  --ours: JSON printed by `cargo run --release --example pii_eval -- corpus.jsonl`
Prints a markdown table: per-entity precision/recall for Presidio (score >= 0 default, and
score >= 0.5) beside ours, and throughput in MB/s.
"""
import json
import re
import sys
import time

from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.nlp_engine.no_op_nlp_engine import NoOpNlpEngine
from spacy.tokens import Doc

MAP = {
    "US_SSN": "SSN",
    "CREDIT_CARD": "CREDIT_CARD",
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
}
OURS_ONLY = ["AWS_KEY", "API_KEY", "GITHUB_TOKEN", "PRIVATE_KEY", "JWT"]
WORD = re.compile(r"\w+|[^\w\s]")


class TokenizingNlpEngine(NoOpNlpEngine):
    """No model: regex tokens, lower-cased tokens as lemmas (enables context words)."""

    def process_text(self, text, language):
        toks = [(m.group(0), m.start()) for m in WORD.finditer(text)]
        words = [t for t, _ in toks] or [""]
        doc = Doc(self._vocab, words=words)
        return NlpArtifacts(
            entities=[],
            tokens=doc,
            tokens_indices=[s for _, s in toks] or [0],
            lemmas=[w.lower() for w in words],
            nlp_engine=self,
            language=language,
        )


def build():
    nlp = TokenizingNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    nlp.load()
    reg = RecognizerRegistry()
    reg.load_predefined_recognizers(nlp_engine=nlp, languages=["en"])
    for r in list(reg.recognizers):
        if type(r).__name__ in ("SpacyRecognizer", "StanzaRecognizer", "TransformersRecognizer"):
            reg.remove_recognizer(r.name)
    return AnalyzerEngine(nlp_engine=nlp, registry=reg, supported_languages=["en"])


def evaluate(rows, preds_per_row):
    counts = {}
    for row, preds in zip(rows, preds_per_row):
        gold = [(e["type"], e["start"], e["end"]) for e in row["entities"]]
        used = [False] * len(gold)
        for (t, s, e) in preds:
            c = counts.setdefault(t, [0, 0, 0])
            hit = next((i for i, g in enumerate(gold) if not used[i] and g[0] == t and g[1] < e and s < g[2]), None)
            if hit is None:
                c[1] += 1
            else:
                used[hit] = True
                c[0] += 1
        for i, g in enumerate(gold):
            if not used[i]:
                counts.setdefault(g[0], [0, 0, 0])[2] += 1
    return counts


def pr(c):
    tp, fp, fn = c
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return p, r


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    corpus = args[0] if args else "tests/pii_corpus/corpus.jsonl"
    ours = None
    if "--ours" in sys.argv:
        with open(sys.argv[sys.argv.index("--ours") + 1]) as f:
            ours = json.load(f)
    rows = [json.loads(l) for l in open(corpus, encoding="utf-8") if l.strip()]
    analyzer = build()
    entities = list(MAP)
    raw = []
    t0 = time.perf_counter()
    c0 = time.process_time()
    for row in rows:
        res = analyzer.analyze(text=row["text"], language="en", entities=entities)
        raw.append([(MAP[r.entity_type], r.start, r.end, r.score) for r in res])
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    nbytes = sum(len(r["text"].encode()) for r in rows)
    tables = {}
    for thr in (0.0, 0.5):
        preds = [[(t, s, e) for (t, s, e, sc) in rr if sc >= thr] for rr in raw]
        tables[thr] = evaluate(rows, preds)
    names = sorted(set(MAP.values()) | set(OURS_ONLY))
    print(f"corpus: {len(rows)} snippets, {nbytes} bytes")
    print("| entity | Presidio P | Presidio R | Presidio P (score>=0.5) | Presidio R (score>=0.5) | sluice P | sluice R |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        cells = []
        for thr in (0.0, 0.5):
            c = tables[thr].get(n)
            if n in OURS_ONLY:
                cells += ["n/a", "n/a"]
            else:
                p, r = pr(c or [0, 0, 0])
                cells += [f"{p:.3f}", f"{r:.3f}"]
        if ours and n in ours["entities"]:
            o = ours["entities"][n]
            cells += [f"{o['precision']:.3f}", f"{o['recall']:.3f}"]
        else:
            cells += ["-", "-"]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print()
    print(f"Presidio throughput: {nbytes / secs / 1e6:.3f} MB/s wall, {nbytes / cpu / 1e6:.3f} MB/s per CPU-second ({secs:.2f} s wall for the corpus, 1 thread)")
    if ours:
        cpu_rate = ours.get("mb_per_cpu_s")
        cpu_txt = f", {cpu_rate:.1f} MB/s per CPU-second" if cpu_rate else ""
        print(f"sluice throughput:   {ours['mb_per_s']:.1f} MB/s wall{cpu_txt} (scan only, release build, 1 thread)")


if __name__ == "__main__":
    main()
