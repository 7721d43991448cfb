"""Retrieval ranks and metrics against hand-computed similarity matrices, and the retrieval report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cpt.eval.retrieval import query_table, rank_metrics, ranks, retrieval_metrics, write_retrieval_report

# 4 videos, 6 captions: video 0 has captions 0 and 1, video 3 has captions 4 and 5
OWNERS = np.array([0, 0, 1, 2, 3, 3])
SIM = np.array([
    #  c0   c1   c2   c3   c4   c5
    [0.9, 0.2, 0.1, 0.5, 0.3, 0.0],  # v0
    [0.1, 0.4, 0.8, 0.5, 0.3, 0.8],  # v1
    [0.2, 0.3, 0.1, 0.5, 0.7, 0.2],  # v2
    [0.0, 0.2, 0.3, 0.1, 0.3, 0.9],  # v3
])
# text -> video, by hand: c0 1 (nothing >= 0.9); c1 4 (v1 0.4, v2 0.3, v3 0.2 tie); c2 1; c3 3 (v0, v1 tie at
# 0.5); c4 4 (v0, v1 tie at 0.3, v2 0.7); c5 1 (v1 0.8 < 0.9)
T2V = [1, 4, 1, 3, 4, 1]
# video -> text, best own caption: v0 0.9 -> 1; v1 0.8, c5 ties at 0.8 -> 2; v2 0.5, c4 0.7 -> 2; v3 0.9 -> 1
V2T = [1, 2, 2, 1]


def test_ranks_by_hand():
    t2v, v2t = ranks(SIM, OWNERS)
    assert t2v.tolist() == T2V
    assert v2t.tolist() == V2T


def test_metrics_by_hand():
    m = retrieval_metrics(SIM, OWNERS)
    expected = {
        "t2v_R@1": 50.0, "t2v_R@5": 100.0, "t2v_R@10": 100.0, "t2v_R@50": 100.0,
        "t2v_MdR": 2.0, "t2v_MnR": 14 / 6, "t2v_RSum": 250.0,
        "v2t_R@1": 50.0, "v2t_R@5": 100.0, "v2t_R@10": 100.0, "v2t_R@50": 100.0,
        "v2t_MdR": 1.5, "v2t_MnR": 1.5, "v2t_RSum": 250.0,
        "RSum": 500.0, "n_videos": 4.0, "n_captions": 6.0,
    }
    assert list(m) == list(expected)
    assert m == pytest.approx(expected)


def test_all_equal_scores_rank_last():
    t2v, v2t = ranks(np.ones((4, 6)), OWNERS)
    assert t2v.tolist() == [4] * 6  # every other video ties
    assert v2t.tolist() == [5, 6, 6, 5]  # 1 + the captions of the other videos
    m = retrieval_metrics(np.zeros((12, 12)), np.arange(12))
    assert m["t2v_R@1"] == m["v2t_R@1"] == m["t2v_R@10"] == 0.0
    assert m["t2v_MdR"] == m["v2t_MnR"] == 12.0


def test_nan_scores_rank_last():
    sim = np.eye(3)
    sim[1, 1] = np.nan
    t2v, v2t = ranks(sim, np.arange(3))
    assert t2v.tolist() == [1, 3, 1]
    assert v2t.tolist() == [1, 3, 1]


def test_recall_boundaries():
    m = rank_metrics(np.array([1, 5, 6, 10, 11, 50, 51, 2]), "")
    assert m["R@1"] == pytest.approx(100 / 8)
    assert m["R@5"] == pytest.approx(300 / 8)  # 1, 2, 5: rank K counts
    assert m["R@10"] == pytest.approx(500 / 8)
    assert m["R@50"] == pytest.approx(700 / 8)
    assert m["RSum"] == pytest.approx(900 / 8)
    assert m["MdR"] == 8.0 and m["MnR"] == pytest.approx(136 / 8)


def test_rank_exactly_k():
    sim = np.eye(5)
    sim[1:, 0] = 1.0  # caption 0: the four other videos tie with its own at 1.0 -> rank 5
    t2v, _ = ranks(sim, np.arange(5))
    assert t2v.tolist() == [5, 1, 1, 1, 1]
    m = retrieval_metrics(sim, np.arange(5))
    assert m["t2v_R@1"] == 80.0 and m["t2v_R@5"] == 100.0


def test_bad_shapes():
    with pytest.raises(ValueError):
        ranks(SIM, OWNERS[:5])
    with pytest.raises(ValueError):
        ranks(SIM, np.array([0, 0, 1, 2, 3, 4]))


def test_query_table_top_video_under_ties():
    videos = ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]
    table = query_table(SIM, OWNERS, [f"c{i}" for i in range(6)], videos)
    assert table["rank"].tolist() == sorted(T2V, reverse=True)
    by_caption = table.set_index("caption")
    assert by_caption.loc["c1", "top_video"] == "v1.mp4" and by_caption.loc["c1", "top_score"] == 0.4
    assert by_caption.loc["c0", "top_video"] == "v0.mp4"  # ranked first: its own video
    assert by_caption.loc["c3", "top_video"] in ("v0.mp4", "v1.mp4")  # tied with its own video: another ranks first
    assert by_caption.loc["c3", "own_score"] == 0.5


def test_report_files(tmp_path):
    task = "msr vtt/1k"
    m = retrieval_metrics(SIM, OWNERS)
    metrics = pd.DataFrame([{"task": task, "split": "test", "metric": k, "value": v} for k, v in m.items()])
    captions = ["a dog | runs", "a cat", "a car", "a man\nsings", "rain", "sun"]
    videos = [f"/data/videos/video{i}.mp4" for i in range(4)]
    report = write_retrieval_report(tmp_path, "Retrieval", metrics, [(task, SIM, OWNERS, captions, videos)],
                                    {"method": "test"})
    assert report == tmp_path / "report.md"
    assert (tmp_path / "ranks_msr_vtt_1k.png").stat().st_size > 0
    worst = pd.read_csv(tmp_path / "worst_queries_msr_vtt_1k.csv")
    assert list(worst.columns) == ["caption", "video", "rank", "top_video", "own_score", "top_score"]
    assert len(worst) == 6 and worst["rank"].iloc[0] == 4
    text = report.read_text()
    assert "| method | test |" in text
    assert "text → video" in text and "video → text" in text
    assert "a dog \\| runs" in text and "a man sings" in text
    assert "ranks_msr_vtt_1k.png" in text and "500.00" in text
