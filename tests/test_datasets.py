"""Dataset loaders against small fixtures in the official layouts (written here), and their protocols."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audiopg.core.errors import AudioFileError
from audiopg.eval.datasets import (
    FixedSplit,
    GroupCV,
    LeaveOneGroupOut,
    OfficialFolds,
    load_dataset,
    load_esc50,
    load_fsd50k,
    load_fsdd,
    load_manifest,
    load_scv2,
    load_us8k,
)
from audiopg.eval.features import HandcraftedFeatures, extract_features

SHARED = Path(os.environ.get("AUDIOPG_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def tone(path: Path, freq: float = 440.0, seconds: float = 0.3, sr: int = 16000, channels: int = 1, seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(sr * seconds)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    if channels > 1:
        x = np.stack([x, 0.5 * x], axis=1)
    sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def no_group_on_both_sides(ds, split) -> bool:
    tr = {ds.items[i].group for i in split.train}
    te = {ds.items[i].group for i in split.test}
    return not (tr & te)


# ----------------------------------------------------------------------------- ESC-50
ESC_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
ESC_CLASSES = {0: "dog", 1: "rooster", 2: "rain"}


def make_esc50(root: Path, folds=(1, 2, 3, 4, 5), per_class: int = 2, extra: list | None = None) -> Path:
    """Official naming {fold}-{src_file}-{take}-{target}.wav; cuts A/B of one source recording in one fold."""
    rows = []
    src = 100000
    for fold in folds:
        for target, cat in ESC_CLASSES.items():
            src += 1
            for k in range(per_class):
                take = "AB"[k % 2]
                name = f"{fold}-{src}-{take}-{target}.wav"
                tone(root / "audio" / name, 200 + 300 * target, seed=src + k)
                rows.append([name, fold, target, cat, "True" if target < 2 else "False", src, take])
    for row in extra or []:
        tone(root / "audio" / row[0], 300)
        rows.append(row)
    write_csv(root / "meta" / "esc50.csv", ESC_HEADER, rows)
    return root


def test_esc50_complete_uses_official_folds(tmp_path):
    root = make_esc50(tmp_path / "ESC-50-master")
    ds = load_esc50(tmp_path)  # the folder above the dataset is accepted too
    assert ds.root == root
    assert isinstance(ds.protocol, OfficialFolds) and ds.protocol.official
    assert ds.classes == ["dog", "rooster", "rain"]
    splits = ds.splits()
    assert [s.name for s in splits] == [f"fold{k}" for k in range(1, 6)]
    for k, s in enumerate(splits, start=1):
        assert {ds.items[i].fold for i in s.test} == {k}
        assert k not in {ds.items[i].fold for i in s.train}
        assert len(s.train) + len(s.test) == len(ds.items)
        assert no_group_on_both_sides(ds, s)
    assert not ds.notes


def test_esc50_partial_falls_back_to_grouped_stratified_cv_and_says_so(tmp_path):
    # fold 4 complete with 4 source recordings per class (2 cuts each), a few clips of fold 2
    rows = []
    src = 500
    for target, cat in ESC_CLASSES.items():
        for r in range(5):
            src += 1
            for take in "AB":
                name = f"4-{src}-{take}-{target}.wav"
                tone(tmp_path / "audio" / name, 200 + 300 * target, seed=src)
                rows.append([name, 4, target, cat, "False", src, take])
    tone(tmp_path / "audio" / "2-999-A-0.wav", 200)
    rows.append(["2-999-A-0.wav", 2, 0, "dog", "True", 999, "A"])
    write_csv(tmp_path / "meta" / "esc50.csv", ESC_HEADER, rows)
    ds = load_esc50(tmp_path, seed=3)
    assert isinstance(ds.protocol, GroupCV) and not ds.protocol.official
    assert "only partly present" in ds.protocol.description
    assert any("src_file" in n and "not comparable" in n for n in ds.notes)
    splits = ds.splits()
    assert len(splits) == 5
    seen = np.concatenate([s.test for s in splits])
    assert sorted(seen.tolist()) == list(range(len(ds.items)))  # every clip tested exactly once
    y = ds.targets()
    for s in splits:
        assert no_group_on_both_sides(ds, s)  # cuts of one recording never on both sides
        assert set(y[s.test]) <= set(y[s.train])
    again = load_esc50(tmp_path, seed=3).splits()
    assert all(np.array_equal(a.test, b.test) for a, b in zip(splits, again))  # seeded
    other = load_esc50(tmp_path, seed=4).splits()
    assert any(not np.array_equal(a.test, b.test) for a, b in zip(splits, other))


def test_esc50_listed_but_missing_file_raises_naming_it_or_is_skipped(tmp_path):
    make_esc50(tmp_path, extra=[["3-777-A-1.wav", 3, 1, "rooster", "False", 777, "A"]])
    (tmp_path / "audio" / "3-777-A-1.wav").unlink()
    with pytest.raises(AudioFileError, match="3-777-A-1.wav"):
        load_esc50(tmp_path)
    ds = load_esc50(tmp_path, skip_bad=True)
    assert [Path(s["path"]).name for s in ds.skipped] == ["3-777-A-1.wav"]
    assert "missing" in ds.skipped[0]["reason"]


@pytest.mark.skipif(not (SHARED / "esc50-fold4" / "meta" / "esc50.csv").exists(),
                    reason="ESC-50 part not present (set AUDIOPG_DATA to the shared data folder)")
def test_shared_esc50_part_uses_grouped_cv_over_309_sources():
    ds = load_esc50(SHARED / "esc50-fold4")
    assert len(ds.items) == 414 and ds.num_classes == 50
    assert isinstance(ds.protocol, GroupCV)
    assert len({it.group for it in ds.items}) == 309
    for s in ds.splits():
        assert no_group_on_both_sides(ds, s)


# ----------------------------------------------------------------------------- UrbanSound8K
US8K_HEADER = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]


def make_us8k(root: Path, shuffle_seed: int | None = None) -> list[list]:
    rows = []
    for fold in range(1, 11):
        for cid, cname in ((0, "air_conditioner"), (3, "dog_bark")):
            fs = 1000 * fold + cid
            name = f"{fs}-{cid}-0-{fold % 3}.wav"
            tone(root / "audio" / f"fold{fold}" / name, 300 + 100 * cid, seed=fs)
            rows.append([name, fs, 0.0, 0.3, 1, fold, cid, cname])
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        rows = [rows[i] for i in rng.permutation(len(rows))]
    write_csv(root / "metadata" / "UrbanSound8K.csv", US8K_HEADER, rows)
    return rows


def test_us8k_predefined_folds_never_reshuffled(tmp_path):
    make_us8k(tmp_path)
    ds = load_us8k(tmp_path)
    assert isinstance(ds.protocol, OfficialFolds)
    assert ds.protocol.folds == list(range(1, 11))
    assert ds.classes[0] == "air_conditioner" and ds.classes[3] == "dog_bark"
    splits = ds.splits()
    assert len(splits) == 10
    for k, s in enumerate(splits, start=1):
        test_files = {ds.items[i].path for i in s.test}
        # exactly the files of audio/fold{k}, as the CSV says
        assert test_files == set((tmp_path / "audio" / f"fold{k}").iterdir())
        assert no_group_on_both_sides(ds, s)
    # row order of the CSV and the seed do not move any file to another fold
    make_us8k(tmp_path, shuffle_seed=1)
    ds2 = load_us8k(tmp_path, seed=7)
    fold_of = {it.path: it.fold for it in ds.items}
    assert all(fold_of[it.path] == it.fold for it in ds2.items)
    for s1, s2 in zip(splits, ds2.splits()):
        assert {ds.items[i].path for i in s1.test} == {ds2.items[i].path for i in s2.test}


def test_us8k_partial_folds_keep_official_assignment_and_note_it(tmp_path):
    make_us8k(tmp_path)
    import shutil

    for k in range(4, 11):
        shutil.rmtree(tmp_path / "audio" / f"fold{k}")
    ds = load_us8k(tmp_path, skip_bad=True)
    assert ds.protocol.folds == [1, 2, 3]
    assert ds.notes and "only folds 1, 2, 3" in ds.notes[0]
    assert len(ds.skipped) == 14


# ----------------------------------------------------------------------------- Speech Commands V2
def make_scv2(root: Path) -> None:
    words = ["yes", "no", "up"]
    val, test = [], []
    for w_i, word in enumerate(words):
        for spk in ("aaaa1111", "bbbb2222", "cccc3333", "dddd4444"):
            for n in range(2):
                name = f"{spk}_nohash_{n}.wav"
                tone(root / word / name, 300 + 200 * w_i, seed=hash((word, spk, n)) % 1000)
                if spk == "cccc3333":
                    val.append(f"{word}/{name}")
                elif spk == "dddd4444":
                    test.append(f"{word}/{name}")
    tone(root / "_background_noise_" / "white_noise.wav", 100, seconds=1.0)
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "LICENSE").write_text("CC BY 4.0\n")


def test_scv2_official_lists_and_background_noise_excluded(tmp_path):
    make_scv2(tmp_path)
    ds = load_scv2(tmp_path)
    assert ds.classes == ["no", "up", "yes"]  # _background_noise_ is not a class
    assert all("_background_noise_" not in str(it.path) for it in ds.items)
    assert isinstance(ds.protocol, FixedSplit)
    (s,) = ds.splits()
    val = set((tmp_path / "validation_list.txt").read_text().split())
    test = set((tmp_path / "testing_list.txt").read_text().split())
    rel = lambda i: f"{ds.items[i].path.parent.name}/{ds.items[i].path.name}"  # noqa: E731
    assert {rel(i) for i in s.val} == val
    assert {rel(i) for i in s.test} == test
    assert {rel(i) for i in s.train} == {rel(i) for i in range(len(ds.items))} - val - test
    assert ds.items[s.test[0]].group == "dddd4444"
    assert any("3 word folders" in n for n in ds.notes)


def test_scv2_list_naming_a_missing_file_raises(tmp_path):
    make_scv2(tmp_path)
    with open(tmp_path / "testing_list.txt", "a") as f:
        f.write("yes/eeee5555_nohash_0.wav\n")
    with pytest.raises(AudioFileError, match="eeee5555_nohash_0.wav"):
        load_scv2(tmp_path)
    assert len(load_scv2(tmp_path, skip_bad=True).skipped) == 1


# ----------------------------------------------------------------------------- FSD50K
def make_fsd50k(root: Path) -> None:
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    vocab = [(0, "Bark", "/m/05tny_"), (1, "Dog", "/m/0bt9lr"), (2, "Animal", "/m/0jbk"), (3, "Rain", "/m/06mb1")]
    with open(gt / "vocabulary.csv", "w", newline="") as f:
        csv.writer(f).writerows(vocab)
    dev = []
    for i in range(12):
        fname = 1000 + i
        labels = "Bark,Dog,Animal" if i % 2 else "Rain"
        mids = "/m/05tny_,/m/0bt9lr,/m/0jbk" if i % 2 else "/m/06mb1"
        tone(root / "FSD50K.dev_audio" / f"{fname}.wav", 300 if i % 2 else 900, seed=i)
        dev.append([fname, labels, mids, "val" if i >= 9 else "train"])
    write_csv(gt / "dev.csv", ["fname", "labels", "mids", "split"], dev)
    ev = []
    for i in range(4):
        fname = 5000 + i
        tone(root / "FSD50K.eval_audio" / f"{fname}.wav", 300 if i % 2 else 900, seed=50 + i)
        ev.append([fname, "Bark,Dog,Animal" if i % 2 else "Rain", "x"])
    write_csv(gt / "eval.csv", ["fname", "labels", "mids"], ev)


def test_fsd50k_multilabel_and_official_splits(tmp_path):
    make_fsd50k(tmp_path)
    ds = load_fsd50k(tmp_path)
    assert ds.task_type == "multi_label" and ds.metric == "mAP"
    assert ds.classes == ["Bark", "Dog", "Animal", "Rain"]
    y = ds.targets()
    assert y.shape == (16, 4)
    assert y[1].tolist() == [1, 1, 1, 0] and y[0].tolist() == [0, 0, 0, 1]
    (s,) = ds.splits()
    assert len(s.train) == 9 and len(s.val) == 3 and len(s.test) == 4
    assert all("eval_audio" in str(ds.items[i].path) for i in s.test)
    assert all("dev_audio" in str(ds.items[i].path) for i in np.r_[s.train, s.val])


def test_fsd50k_unknown_label_is_an_error(tmp_path):
    make_fsd50k(tmp_path)
    p = tmp_path / "FSD50K.ground_truth" / "eval.csv"
    p.write_text(p.read_text().replace("Rain", "Thunder", 1))
    with pytest.raises(Exception, match="Thunder"):
        load_fsd50k(tmp_path)


# ----------------------------------------------------------------------------- FSDD
def make_fsdd(root: Path, speakers=("george", "jackson", "lucas"), takes=8) -> None:
    for spk_i, spk in enumerate(speakers):
        for d in range(10):
            for t in range(takes):
                tone(root / "recordings" / f"{d}_{spk}_{t}.wav", 150 + 60 * d, seconds=0.2, sr=8000,
                     seed=spk_i * 1000 + t)


def test_fsdd_own_split_takes_0_to_4_are_test(tmp_path):
    make_fsdd(tmp_path)
    ds = load_fsdd(tmp_path, protocol="own")
    (s,) = ds.splits()
    take = lambda i: int(ds.items[i].path.stem.split("_")[2])  # noqa: E731
    assert {take(i) for i in s.test} == {0, 1, 2, 3, 4}
    assert {take(i) for i in s.train} == {5, 6, 7}
    assert len(s.test) == 3 * 10 * 5
    assert ds.targets()[s.test].tolist() == [int(ds.items[i].path.stem[0]) for i in s.test]


def test_fsdd_leave_one_speaker_out(tmp_path):
    make_fsdd(tmp_path)
    ds = load_dataset("fsdd", tmp_path / "recordings", protocol="loso")
    assert isinstance(ds.protocol, LeaveOneGroupOut) and ds.protocol.inner_grouped
    splits = ds.splits()
    assert [s.name for s in splits] == ["speaker=george", "speaker=jackson", "speaker=lucas"]
    for s in splits:
        assert len({ds.items[i].group for i in s.test}) == 1
        assert no_group_on_both_sides(ds, s)


def test_fsdd_badly_named_file(tmp_path):
    make_fsdd(tmp_path, speakers=("theo",), takes=6)
    tone(tmp_path / "recordings" / "hello.wav")
    with pytest.raises(AudioFileError, match="hello.wav"):
        load_fsdd(tmp_path)
    assert len(load_fsdd(tmp_path, skip_bad=True).skipped) == 1


@pytest.mark.skipif(not (SHARED / "fsdd" / "recordings").exists(), reason="FSDD not present in the shared data folder")
def test_shared_fsdd_counts():
    own = load_fsdd(SHARED / "fsdd")
    (s,) = own.splits()
    assert len(s.train) == 2700 and len(s.test) == 300
    assert len(load_fsdd(SHARED / "fsdd", protocol="loso").splits()) == 6


# ----------------------------------------------------------------------------- generic
def test_folder_per_class(tmp_path):
    for c, f in (("low", 200), ("high", 2000)):
        for i in range(5):
            tone(tmp_path / c / "sub" / f"{i}.flac", f, seed=i)
    (tmp_path / "empty").mkdir()
    ds = load_dataset("folder", tmp_path)
    assert ds.classes == ["high", "low"]
    assert len(ds.items) == 10 and ds.protocol.n_splits == 5
    assert sorted(np.concatenate([s.test for s in ds.splits()]).tolist()) == list(range(10))


def test_manifest_groups_split_and_continuous_target(tmp_path):
    rows = []
    for i in range(24):
        p = tone(tmp_path / "clips" / f"c{i}.wav", 200 + 50 * i, seed=i)
        rows.append([f"clips/{p.name}", "a" if i % 2 else "b", f"rec{i // 4}", 0.5 + 0.1 * i + 0.01])
    write_csv(tmp_path / "m.csv", ["path", "label", "group", "pitch"], rows)
    ds = load_manifest(tmp_path / "m.csv")
    assert ds.task_type == "single_label" and ds.classes == ["a", "b"]
    assert isinstance(ds.protocol, GroupCV) and ds.protocol.inner_grouped
    for s in ds.splits():
        assert no_group_on_both_sides(ds, s)
    reg = load_dataset("manifest", tmp_path / "m.csv", target_column="pitch")
    assert reg.task_type == "regression" and reg.metric == "r2"
    assert reg.targets()[3] == pytest.approx(0.81)
    # a split column wins over cross-validation
    rows2 = [r[:2] + [("train", "val", "test")[i % 3]] for i, r in enumerate(rows)]
    write_csv(tmp_path / "s.csv", ["path", "label", "split"], rows2)
    (s,) = load_manifest(tmp_path / "s.csv").splits()
    assert len(s.train) == len(s.val) == len(s.test) == 8


def test_manifest_errors_name_the_problem(tmp_path):
    write_csv(tmp_path / "m.csv", ["path", "klass"], [["a.wav", "x"]])
    with pytest.raises(Exception, match="label"):
        load_manifest(tmp_path / "m.csv")
    with pytest.raises(Exception, match="fsdd only"):
        load_dataset("esc50", tmp_path, protocol="loso")


# ----------------------------------------------------------------------------- audio edge cases
def test_corrupt_empty_and_stereo_44k_files(tmp_path):
    for i in range(4):
        tone(tmp_path / "a" / f"{i}.wav", 300, seed=i)
        tone(tmp_path / "b" / f"{i}.wav", 3000, seed=i)
    stereo = tone(tmp_path / "a" / "stereo.wav", 300, sr=44100, channels=2)
    ds = load_dataset("folder", tmp_path)
    feats, bad = extract_features(ds, [HandcraftedFeatures()], progress=False)
    assert not bad and np.isfinite(feats["handcrafted"]).all()
    # the stereo 44.1 kHz file equals its mono mix resampled to 16 kHz
    data, sr = sf.read(stereo, dtype="float32")
    from audiopg.audio.io import resample

    mono = resample(data.mean(axis=1), sr, 16000)
    ref = HandcraftedFeatures()([mono])[0]
    i = [it.path for it in ds.items].index(stereo)
    np.testing.assert_allclose(feats["handcrafted"][i], ref, rtol=1e-4, atol=1e-4)

    (tmp_path / "b" / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" + os.urandom(64))
    (tmp_path / "b" / "empty.wav").write_bytes(b"")
    ds = load_dataset("folder", tmp_path)
    with pytest.raises(AudioFileError, match="corrupt.wav"):
        extract_features(ds, [HandcraftedFeatures()], progress=False)
    feats, bad = extract_features(ds, [HandcraftedFeatures()], skip_bad=True, progress=False)
    names = sorted(Path(ds.items[i].path).name for i in bad)
    assert names == ["corrupt.wav", "empty.wav"]
    assert all(np.isnan(feats["handcrafted"][i]).all() for i in bad)  # never a silent zero row
    assert "empty" in bad[[i for i in bad if ds.items[i].path.name == "empty.wav"][0]]
