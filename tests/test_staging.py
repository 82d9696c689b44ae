"""jobs.staging.staged_dir: a folder replaces its predecessor only once it is complete."""
import pytest

from jobs.staging import staged_dir


def test_complete_build_replaces_the_old_folder(tmp_path):
    final = tmp_path / "report"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with staged_dir(final) as work:
        assert work.parent == tmp_path and work != final and not any(work.iterdir())
        (work / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"  # untouched while building
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging folder left


def test_failed_build_keeps_the_old_folder_and_leaves_nothing(tmp_path):
    final = tmp_path / "nested" / "eval"
    final.mkdir(parents=True)
    (final / "metrics.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt), staged_dir(final) as work:
        (work / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert sorted(p.name for p in final.iterdir()) == ["metrics.json"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["eval"]


def test_missing_parent_is_created(tmp_path):
    final = tmp_path / "a" / "b"
    with staged_dir(final) as work:
        (work / "x").write_text("1")
    assert (final / "x").read_text() == "1"
