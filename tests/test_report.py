"""The Markdown report and its plots."""

import numpy as np
from PIL import Image

from cpt.metrics import TaskPredictions, metrics_frame, per_class_frame
from cpt.report import write_single_label_report


def test_report_has_headline_numbers_and_valid_plots(tmp_path):
    rng = np.random.default_rng(0)
    tasks = []
    for name, n in (("pets/cats", 3), ("cars", 25)):
        y = rng.integers(0, n, 40)
        logits = rng.normal(size=(40, n))
        logits[np.arange(40)[:30], y[:30]] += 10  # 30 of 40 right
        tasks.append(TaskPredictions(name, [f"class {i}" for i in range(n)], y, logits, [f"{i}.jpg" for i in range(40)]))
    metrics = metrics_frame(tasks, "test")
    per_class = __import__("pandas").concat([per_class_frame(t) for t in tasks])
    report = write_single_label_report(tmp_path, "My run", tasks, metrics, per_class, {"method": "coop"})
    text = report.read_text()
    assert text.startswith("# My run") and "| method | coop |" in text
    accuracy = metrics.set_index(["task", "metric"])["value"][("cars", "accuracy")]
    assert f"| cars | {accuracy:.2f} |" in text and "| mean |" in text
    for stem in ("pets_cats", "cars"):
        for kind in ("confusion", "per_class"):
            png = tmp_path / f"{kind}_{stem}.png"
            assert f"({png.name})" in text
            with Image.open(png) as im:
                assert im.format == "PNG" and im.size[0] > 100
