"""evaluate_vlm.py's loop: answer every TSV row (batched, resumable), write MindSpeed-MM's files.

Files in `result_output_path` (names as MindSpeed-MM's, `<model>` = evaluation_model,
`<dataset>` = evaluation_dataset):
- `0_1_<dataset>.json`: {index: prediction} written after every batch while the run goes; a
  restarted run reads it and only answers the rows not in it; removed once the results are written.
- `<model>_<dataset>.xlsx`: the TSV's columns (without `image`) plus `prediction`; for multiple
  choice also `hit` and `log`, rows sorted by index, every cell and header wrapped in double quotes
  (MindSpeed-MM's sanitize step), column names lower-cased except the option letters.
- `<model>_<dataset>_acc.xlsx`: the accuracy table (multiple choice: split, Overall, per category,
  fractions; VQA: Overall and per split or category, percent).
- `<model>_<dataset>_PREV.json` (multiple choice): {index: {"hit", "log"}}.
MindSpeed-MM writes xlsx with xlsxwriter; here the xlsx files are written when openpyxl is installed,
else the same tables go to `.tsv` files of the same names (a start-up notice says so).
"""
import json
import os
import string

from mindspeed_ms.inference.benchmarks import scoring
from mindspeed_ms.inference.benchmarks.datasets import (DATASET_TYPES, build_prompt, dump_images, image_dir,
                                                        read_benchmark_tsv)


def xlsx_available():
    try:
        import openpyxl  # noqa: F401
        return True
    except ImportError:
        return False


def table_path(path_xlsx):
    """Where a table MindSpeed-MM writes as .xlsx goes here (.tsv without openpyxl)."""
    return path_xlsx if xlsx_available() else path_xlsx[:-len(".xlsx")] + ".tsv"


def write_table(df, path_xlsx):
    path = table_path(path_xlsx)
    if path.endswith(".xlsx"):
        df.to_excel(path, index=False, engine="openpyxl")
    else:
        df.to_csv(path, sep="\t", index=False)
    return path


def sanitize(df, q='"'):
    """MindSpeed-MM's sanitize_dataframe: every header and cell wrapped in quotes."""
    out = df.copy()
    out.columns = [f"{q}{c}{q}" for c in out.columns]
    for c in out.columns:
        out[c] = out[c].apply(lambda x: f"{q}{x}{q}")
    return out


def _atomic_json(obj, path):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    os.replace(tmp, path)


def result_files(cfg):
    base = os.path.join(cfg.result_output_path, f"{cfg.evaluation_model}_{cfg.evaluation_dataset}")
    return {"partial": os.path.join(cfg.result_output_path, f"0_1_{cfg.evaluation_dataset}.json"),
            "result": base + ".xlsx", "acc": base + "_acc.xlsx", "prev": base + "_PREV.json"}


def predict(pipeline, cfg, data, batch_size, progress=True, log=print):
    """{str(index): prediction} for every row, resuming from the partial file."""
    from tqdm import tqdm

    files = result_files(cfg)
    preds = {}
    if os.path.isfile(files["partial"]):
        try:
            with open(files["partial"], encoding="utf-8") as f:
                preds = {str(k): v for k, v in json.load(f).items()}
        except (json.JSONDecodeError, AttributeError):
            raise ValueError(f"{files['partial']}: not a predictions file ({{index: prediction}}); it was left by "
                             f"an interrupted run: move it away to start over") from None
        known = set(str(x) for x in data["index"])
        preds = {k: v for k, v in preds.items() if k in known}
        log(f"resuming: {len(preds)} of {len(data)} predictions already in {files['partial']}")
    todo = [i for i, idx in enumerate(data["index"]) if str(idx) not in preds]
    imgs_at = image_dir(cfg.dataset_path, cfg.evaluation_dataset)
    bar = tqdm(total=len(data), initial=len(data) - len(todo), desc=cfg.evaluation_dataset, disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        prompts = []
        for i in chunk:
            row = data.iloc[i]
            where = f"{cfg.dataset_path}: row index {row['index']}"
            msg = build_prompt(row, dump_images(row, imgs_at, where), cfg.evaluation_dataset, cfg.evaluation_model,
                               cfg.use_custom_prompt)
            try:
                prompts.append(pipeline.encode(msg, cfg.min_pixels, cfg.max_pixels))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        for i, text in zip(chunk, pipeline.answer(prompts)):
            preds[str(data["index"].iloc[i])] = text
        _atomic_json({k: preds[k] for k in (str(x) for x in data["index"]) if k in preds}, files["partial"])
        bar.update(len(chunk))
    bar.close()
    return preds


def analyse_mcq(table, data, cfg, files):
    """Letter matching; writes the scored predictions, the accuracy table and the _PREV file."""
    df = table.sort_values(by="index").copy()
    df["prediction"] = [str(x) for x in df["prediction"]]
    df.columns = [c if c in string.ascii_uppercase else c.lower() for c in df.columns]
    answer_map = dict(zip(data["index"], data["answer"]))
    if "MMMU" in cfg.evaluation_dataset:
        # MindSpeed-MM's test is case-sensitive, so it never runs for 'mmmu_dev_val' (kept as is)
        df = df.__class__(scoring.mmmu_open_to_choice(df.to_dict("records")))
        answer_map = {k: (v if v in list(string.ascii_uppercase) else "A") for k, v in answer_map.items()}
    df = df[df["index"].isin(answer_map)].copy()
    df["GT"] = [answer_map[i] for i in df["index"]]
    results = [scoring.mcq_hit(r) for r in df.to_dict("records")]
    prev = {}
    if os.path.isfile(files["prev"]):
        with open(files["prev"], encoding="utf-8") as f:
            prev = json.load(f)
    prev.update({str(k): v for k, v in zip(df["index"], results)})
    _atomic_json(prev, files["prev"])
    df["hit"] = [r["hit"] for r in results]
    df["log"] = [r["log"] for r in results]
    df = df.drop(columns=["GT"])
    written = [write_table(sanitize(df), files["result"])]
    acc = scoring.mcq_report(df.to_dict("records"))
    written.append(write_table(sanitize(df.__class__(acc)), files["acc"]))
    return {k: v for k, v in acc.items()}, written


def analyse_vqa(table, cfg, files):
    df = table.copy()
    df["prediction"] = [str(x) for x in df["prediction"]]
    df["answer"] = [str(x) for x in df["answer"]]
    summary, _ = scoring.vqa_summary(df.to_dict("records"), cfg.evaluation_dataset)
    import pandas as pd

    written = [write_table(sanitize(pd.DataFrame({k: [v] for k, v in summary.items()})), files["acc"])]
    return summary, written


def run_evaluation(pipeline, cfg, batch_size=1, progress=True, log=print):
    """Predict, write MindSpeed-MM's result files, return (summary, written paths)."""
    os.makedirs(cfg.result_output_path, exist_ok=True)
    files = result_files(cfg)
    data = read_benchmark_tsv(cfg.dataset_path, cfg.evaluation_dataset)
    preds = predict(pipeline, cfg, data, batch_size, progress, log)
    table = data.drop(columns=["image"]).copy()
    table["prediction"] = [str(preds[str(x)]) for x in data["index"]]
    written = [write_table(table, files["result"])]
    if DATASET_TYPES[cfg.evaluation_dataset] == "MCQ":
        summary, more = analyse_mcq(table, data, cfg, files)
    else:
        summary, more = analyse_vqa(table, cfg, files)
    os.remove(files["partial"])
    return summary, sorted(set(written + more))
