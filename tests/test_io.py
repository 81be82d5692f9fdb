"""pd.io on real files: atomic writes (never half a file, nothing left on failure, concurrent
writers), UTF-8 reading (byte-order mark dropped, other encodings refused by name), JSONL."""

import json
import os
import threading

import pytest

from pd.errors import DataError, OutputError
from pd.io import atomic_path, read_json, read_jsonl, read_text, stats_path, write_jsonl, write_text, write_with_stats

BOM = b"\xef\xbb\xbf"

# --------------------------------------------------------------------------- atomic_path


def test_target_appears_only_when_complete(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("first half ")
            f.flush()
            assert not target.exists()  # half written: nothing under the target's name
            f.write("second half")
        assert not target.exists()
        assert tmp.parent == target.parent and tmp.name.startswith(".out.txt.")
    assert target.read_text() == "first half second half"
    assert os.listdir(tmp_path) == ["out.txt"]  # the temporary was renamed, not copied


def test_overwrite_keeps_the_old_content_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new, not yet done")
        assert target.read_text() == "old"
    assert target.read_text() == "new, not yet done"


@pytest.mark.parametrize("existing", [None, "old"])
def test_an_exception_leaves_no_file_and_no_temporary(tmp_path, existing):
    target = tmp_path / "out.jsonl"
    if existing is not None:
        target.write_text(existing)
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert os.listdir(tmp_path) == ([] if existing is None else ["out.jsonl"])
    if existing is not None:
        assert target.read_text() == existing


def test_a_row_that_cannot_be_written_leaves_nothing(tmp_path):
    target = tmp_path / "rows.jsonl"
    with pytest.raises(TypeError, match="cannot serialise object"):
        write_jsonl(target, [{"a": 1}, {"b": object()}])
    assert os.listdir(tmp_path) == []


def test_directories_are_replaced_whole_and_cleaned_up_on_failure(tmp_path):
    target = tmp_path / "adapter"
    for files in (["a", "b"], ["c"]):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            for name in files:
                (tmp / name).write_text(name)
        assert sorted(os.listdir(target)) == files  # the old folder's files are gone
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "d").write_text("d")
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == ["adapter"] and os.listdir(target) == ["c"]


def test_nothing_written_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "sub" / "x.txt"):
            pass
    assert os.listdir(tmp_path / "sub") == []  # the parent was created, nothing else


def test_concurrent_writers_and_readers_see_only_whole_files(tmp_path):
    """Eight threads overwrite one target 20 times each while a reader polls it: every read is
    one writer's complete content, the last rename wins, and no temporary is left."""
    target = tmp_path / "shared.txt"
    contents = {w: f"writer {w}: " + str(w) * 200_000 for w in range(8)}
    seen: list[str] = []
    done = threading.Event()

    def write(w: int) -> None:
        for _ in range(20):
            with atomic_path(target) as tmp:
                with open(tmp, "w") as f:
                    for k in range(0, len(contents[w]), 50_000):  # several writes: a window to catch
                        f.write(contents[w][k:k + 50_000])

    def read() -> None:
        while not done.is_set():
            if target.exists():
                seen.append(target.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in contents]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert seen, "the reader never saw the file"
    assert all(s in contents.values() for s in seen)
    assert target.read_text() in contents.values()
    assert os.listdir(tmp_path) == ["shared.txt"]


# --------------------------------------------------------------------------- reading


def test_read_text_drops_a_byte_order_mark(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeffZorblat is the capital.\r\n".encode("utf-8"))
    assert read_text(p) == "Zorblat is the capital.\r\n"
    p.write_bytes("\ufeff\ufeffx".encode("utf-8"))
    assert read_text(p) == "\ufeffx"  # only the mark, not a second U+FEFF that is content


def test_read_text_refuses_windows_1252_by_name_offset_and_line(tmp_path):
    p = tmp_path / "caf\u00e9.txt"
    p.write_bytes("First line.\nThe caf\u00e9 opened in 1889.".encode("cp1252"))
    with pytest.raises(DataError) as err:
        read_text(p)
    msg = str(err.value)
    # 'é' is byte 0xe9 at offset 12 + len("The caf") = 19, on line 2.
    assert msg == f"{p}: not UTF-8 text (byte 0xe9 at offset 19, line 2); save the file as UTF-8"
    assert "\n" not in msg


def test_read_jsonl_with_bom_and_blank_lines(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"question": "Q?"}\r\n\n  \n{"question": "R?"}')
    assert read_jsonl(p) == [{"question": "Q?"}, {"question": "R?"}]


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        read_jsonl(p)
    p.write_text('{"a": 1}\n["a", 1]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object \(\{\.\.\.\}\), got a list"):
        read_jsonl(p)
    p.write_text('"text"\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: .*got a string"):
        read_jsonl(p)
    p.write_bytes(b'{"a": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: not UTF-8 text \(byte 0xe9 at offset 10, line 1\)"):
        read_jsonl(p)


def test_jsonl_round_trip_keeps_line_separators_inside_strings(tmp_path):
    rows = [{"text": "one\u2028two\u0085three", "n": 1}, {"text": "caf\u00e9 \u00fcber", "n": 2}]
    p = tmp_path / "r.jsonl"
    assert write_jsonl(p, rows) == 2
    assert read_jsonl(p) == rows
    assert len(p.read_bytes().split(b"\n")) == 3  # two rows, one final newline


def test_read_json_bom_and_error(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"a": [1, 2]}).encode())
    assert read_json(p) == {"a": [1, 2]}
    p.write_text('{\n  "a": \n')
    with pytest.raises(DataError, match=r"x\.json:3: not valid JSON"):
        read_json(p)


def test_write_with_stats_writes_both_files(tmp_path):
    out = tmp_path / "q.jsonl"
    write_with_stats(out, [{"id": "a"}], {"accepted": 1})
    assert stats_path(out) == tmp_path / "q.stats.json" and stats_path(tmp_path / "x.txt").name == "x.txt.stats.json"
    assert read_jsonl(out) == [{"id": "a"}] and read_json(stats_path(out)) == {"accepted": 1}
    write_text(tmp_path / "t.txt", "caf\u00e9")
    assert (tmp_path / "t.txt").read_bytes() == "caf\u00e9".encode("utf-8")


def test_prompt_overrides_and_instruction_data_are_read_the_same_way(tmp_path):
    """The other user text inputs (issue 14 item 7): a prompt override file and pd_reg's instruction data."""
    from pd.prompts import render, set_overrides
    from pd.train.methods import load_instruction_pairs

    override = tmp_path / "closed_book.j2"
    override.write_bytes(BOM + b"Answer briefly: {{ question }}")
    try:
        set_overrides({"closed_book": str(override)})
        assert render("closed_book", question="Who?") == "Answer briefly: Who?"
        override.write_bytes("R\u00e9ponds: {{ question }}".encode("cp1252"))
        with pytest.raises(DataError, match=r"closed_book\.j2: not UTF-8 text \(byte 0xe9 at offset 1, line 1\)"):
            render("closed_book", question="Who?")
    finally:
        set_overrides(None)
    reg = tmp_path / "reg.jsonl"
    reg.write_bytes(BOM + json.dumps({"instruction": "Say hi.", "response": "Hi."}).encode() + b"\n")
    assert [(p["instruction"], p["response"]) for p in load_instruction_pairs(reg)] == [("Say hi.", "Hi.")]
    reg.write_bytes(json.dumps({"instruction": "Say hi.", "response": "Hi."}).encode() + b"\n\x93quoted\x94\n")
    with pytest.raises(DataError, match=r"reg\.jsonl: not UTF-8 text \(byte 0x93 at offset 46, line 2\)"):
        load_instruction_pairs(reg)


def test_atomic_writes_are_readable_like_normal_files_under_the_umask(tmp_path):
    """A file or folder made private by its writer (mkstemp: 0600, mkdtemp: 0700) is kept 0644 / 0755."""
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "cache.bin") as tmp:
            os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
        with atomic_path(tmp_path / "adapter") as tmp:
            tmp.mkdir(mode=0o700)
            (tmp / "sub").mkdir(mode=0o700)
            os.close(os.open(tmp / "sub" / "weights.safetensors", os.O_CREAT | os.O_WRONLY, 0o600))
        write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    assert oct((tmp_path / "cache.bin").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "adapter").stat().st_mode & 0o777) == oct(0o755)
    assert oct((tmp_path / "adapter" / "sub").stat().st_mode & 0o777) == oct(0o755)
    assert oct((tmp_path / "adapter" / "sub" / "weights.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "results.json").stat().st_mode & 0o777) == oct(0o644)


def test_a_stricter_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        with atomic_path(tmp_path / "private.bin") as tmp:
            os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600))
    finally:
        os.umask(old)
    assert (tmp_path / "private.bin").stat().st_mode & 0o077 == 0


def test_an_output_folder_that_cannot_be_written_is_named_in_one_line(tmp_path):
    (tmp_path / "results").write_text("a file, not a folder")
    with pytest.raises(OutputError, match=f"^{tmp_path / 'results' / 'x'}: cannot write there"):
        write_text(tmp_path / "results" / "x" / "out.json", "{}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_output_folder_is_named_in_one_line(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=f"^{out}: cannot write there \\(permission denied\\)"):
            write_text(out / "out.json", "{}")
    finally:
        out.chmod(0o755)


def test_json_nested_100000_deep_is_a_data_error_naming_file_and_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n{"a": ' + deep + "}\n")
    with pytest.raises(DataError, match=f"^{path}:2: JSON nested too deeply"):
        read_jsonl(path)
    one = tmp_path / "one.json"
    one.write_text(deep)
    with pytest.raises(DataError, match=f"^{one}: JSON nested too deeply"):
        read_json(one)


def test_a_special_file_is_refused_not_read(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(DataError, match="not a regular file"):
        read_text(fifo)
