"""Answer extraction and scores of the four VLMEvalKit benchmarks, with MindSpeed-MM's rules.

- Multiple choice (AI2D, MMMU): the option letter is read from the prediction (a lone letter
  token after removing `.()[],:;!*#{}`, else the one option whose text appears in it); 'Z' when
  the model refuses or no letter can be read; hit = letter == ground truth.
- ChartQA: relaxed accuracy (a number within 5% of the target, else case-insensitive equality);
  an item's score is the best over its answers.
- DocVQA: ANLS (1 - normalised Levenshtein distance, 0 below 0.5); best over the answers.
- Otherwise (not one of the four, kept for completeness): VQA score (min(1, matches/3)).

The quirks are MindSpeed-MM's and kept on purpose so that scores are comparable, e.g. the ANLS
length is taken before whitespace normalisation, and `VERBOSE` set to any string (even "0")
turns on the "A might be a quantifier" rejection.
"""
import ast
import copy
import os
import re
import string
from collections import defaultdict

import numpy as np

REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)

MMB_ABBRS = {
    "coarse_perception": "CP",
    "finegrained_perception (instance-level)": "FP-S",
    "finegrained_perception (cross-instance)": "FP-C",
    "logic_reasoning": "LR",
    "relation_reasoning": "RR",
    "attribute_reasoning": "AR",
}


def is_na(x):
    """pandas' notion of a missing cell (None, NaN) without importing pandas here."""
    if x is None:
        return True
    try:
        return bool(x != x)  # NaN is the only value not equal to itself
    except (TypeError, ValueError):
        return False


def is_literal_of(s, typ):
    """`s` is a `typ`, or a string that Python-literal-evaluates to one (e.g. "['a', 'b']")."""
    if isinstance(s, typ):
        return True
    try:
        return isinstance(ast.literal_eval(s), typ)
    except Exception:  # noqa: BLE001 - any unparsable value simply is not a literal of typ
        return False


def option_choices(item):
    """{letter: option text} of the non-empty A-Z columns of a row (a mapping or pandas Series)."""
    return {ch: item[ch] for ch in string.ascii_uppercase if ch in item and not is_na(item[ch])}


def _letter_in_option(answer, choices):
    answer = str(answer)
    verbose = os.environ.get("VERBOSE", 0)
    if "Failed to obtain answer via API" in answer:
        return False
    if any(r in answer for r in REFUSALS):
        return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = [x.strip() for x in mod.split()]
    matches = [ch for ch in choices if ch in splits]
    if len(matches) == 1:
        if "A" in splits and len(splits) > 3 and verbose:
            return False
        return matches.pop()
    if not matches and ("Z" in splits or "" in splits):
        return "Z"
    return False


def _letter_in_text(answer, choices):
    answer = answer.lower()
    lowered = {k: str(v).lower() for k, v in choices.items()}
    cands = [k for k, v in lowered.items() if v in answer]
    return cands[0] if len(cands) == 1 else False


def extract_option(prediction, choices):
    """(letter, found): the option letter a prediction names ('Z' for a refusal), found=False
    when none can be read (the letter is then 'Z' too)."""
    pred = prediction if isinstance(prediction, str) else str(prediction)
    found = _letter_in_option(pred, dict(choices)) or _letter_in_text(pred, dict(choices))
    return (found, True) if found else ("Z", False)


def mcq_hit(item):
    """{"hit": 0/1, "log": ...} for a row with A-Z options, 'prediction' and 'GT'."""
    opt, found = extract_option(item["prediction"], option_choices(item))
    log = item["prediction"] if found else \
        "Failed in Prefetch, no GPT-based answer matching under `exact_matching` policy."
    return {"hit": int(opt == item["GT"]), "log": f"Match Log: {log}. "}


def relaxed_correctness(target, prediction, max_relative_change=0.05):
    """ChartQA's relaxed accuracy of one answer (note MindSpeed-MM calls it with the prediction
    first, so the 5% is relative to the prediction; kept)."""
    def to_float(text):
        try:
            return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            return None

    prediction, target = str(prediction), str(target)
    p, t = to_float(prediction), to_float(target)
    if p is not None and t:
        return abs(p - t) / abs(t) <= max_relative_change
    return prediction.lower() == target.lower()


def levenshtein(s1, s2):
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    dist = list(range(len(s1) + 1))
    for i2, c2 in enumerate(s2):
        row = [i2 + 1]
        for i1, c1 in enumerate(s1):
            row.append(dist[i1] if c1 == c2 else 1 + min(dist[i1], dist[i1 + 1], row[-1]))
        dist = row
    return dist[-1]


def anls_distance(groundtruth, prediction):
    """Normalised edit distance (0 = equal). The length uses the raw strings (MindSpeed-MM's rule)."""
    gt = " ".join(groundtruth.strip().lower().split())
    det = " ".join(prediction.strip().lower().split())
    length = max(len(groundtruth.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else float(levenshtein(gt, det)) / float(length)


_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
# the standard VQA contraction fixes (apostrophe-less spellings -> the spelled form)
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def vqa_normalize(answer):
    """The VQA answer normalisation (punctuation, number words, articles, contractions)."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    out = answer
    for p in _PUNCT:
        if (p + " " in answer or " " + p in answer) or _COMMA_STRIP.search(answer) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out, re.UNICODE)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def vqa_matches(answer_cell, prediction, method):
    """Per-answer match values of one row: the 'match' list MindSpeed-MM's hit rule reduces."""
    answers = ast.literal_eval(answer_cell) if is_literal_of(answer_cell, list) else [answer_cell]
    if method == "anls":
        return [anls_distance(x, prediction) for x in answers]
    if method == "relaxed_accuracy":
        pred = prediction.strip()
        return [relaxed_correctness(pred, x) for x in answers]
    if method == "accuracy":
        pred = prediction.strip()
        return [1.0 if x.strip().lower() == pred.strip().lower() else 0.0 for x in answers]
    gts = [vqa_normalize(x) for x in answers]
    pred = vqa_normalize(prediction)
    return [min(1, float(sum(1 for j, g in enumerate(gts) if j != i and g == pred)) / 3) for i in range(len(gts))]


def vqa_method(dataset_name):
    name = dataset_name.lower()
    if "chartqa" in name:
        return "relaxed_accuracy"
    if "docvqa" in name or "infovqa" in name:
        return "anls"
    return "vqa_score"


def vqa_hit(matches, dataset_name, anls_threshold=0.5):
    """One row's score from its match list."""
    name = dataset_name.lower()
    if "textvqa" in name:
        return float(np.mean(matches))
    if "docvqa" in name or "infovqa" in name:
        best = 1 - float(np.min(matches))
        return 0.0 if best < anls_threshold else best
    if "chartqa" in name or "ocrvqa" in name:
        return float(np.max(matches))
    return float(np.mean(matches))


def vqa_summary(rows, dataset_name):
    """{"Overall": percent, per split (or per category)} for rows with 'answer', 'prediction'."""
    method = vqa_method(dataset_name)
    hits = [vqa_hit(vqa_matches(str(r["answer"]), str(r["prediction"]), method), dataset_name) for r in rows]
    out = {}
    if rows and "split" in rows[0]:
        for sp in set(r["split"] for r in rows):
            out[sp] = float(np.mean([h for r, h in zip(rows, hits) if r["split"] == sp])) * 100
        out["Overall"] = float(np.mean(hits)) * 100
    else:
        out["Overall"] = float(np.mean(hits)) * 100
        if rows and "category" in rows[0]:
            for c in sorted(set(r["category"] for r in rows)):
                out[c] = float(np.mean([h for r, h in zip(rows, hits) if r["category"] == c])) * 100
    return out, hits


def mcq_report(rows):
    """MindSpeed-MM's accuracy table: {"split": [...], "Overall": [...], <category>: [...]}.

    `rows`: dicts with 'hit' and optionally 'split', 'category', 'l2-category'."""
    splits = list(dict.fromkeys(r.get("split", "none") for r in rows))
    res = defaultdict(list)
    res["split"] = splits

    def acc(sub):
        return [float(np.mean([r["hit"] for r in sub if r.get("split", "none") == sp])) if
                any(r.get("split", "none") == sp for r in sub) else float("nan") for sp in splits]

    res["Overall"] = acc(rows)
    for group in ("l2-category", "category"):
        if rows and group in rows[0]:
            for ab in sorted(set(r[group] for r in rows)):
                res[MMB_ABBRS.get(ab, ab)] = acc([r for r in rows if r[group] == ab])
    return dict(res)


def mmmu_open_to_choice(rows):
    """MMMU open questions (no option A) become 2-way choices: A = the answer, B = 'Other Answers'."""
    out = []
    for r in rows:
        r = copy.copy(r)
        if is_na(r.get("A")):
            r["A"], r["B"] = r["answer"], "Other Answers"
        out.append(r)
    return out
