"""Corpus readers: formats, fields, domains, input resolution and the error policy.

Every test writes its own tiny input under `tmp_path`; nothing loads a model or
touches the network.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from relm.config import ReaderConfig
from relm.corpus.documents import Document, parse_timestamp
from relm.corpus.readers import InputFile, ReadStats, detect_format, read_documents, resolve_inputs
from relm.errors import InputError

# 2021-03-04T05:06:07Z and 2021-03-04T00:00:00Z in seconds since the epoch
TS = 1614834367
DAY = 1614816000

RECORDS = [
    {
        "id": "a",
        "text": "First document.\nIt has two lines.",
        "title": "One",
        "timestamp": TS,
        "domain": "news",
        "lang": "en",
        "score": 0.5,
    },
    {
        "id": "b",
        "text": "Second document, with  double  spaces\tand a tab.",
        "title": "Two",
        "timestamp": DAY,
        "domain": "wiki",
        "lang": "fr",
        "score": 1.5,
    },
    {
        "id": "c",
        "text": "Third: ünïcödé ✓ 文字",
        "title": "Three",
        "timestamp": 0,
        "domain": "news",
        "lang": "zh",
        "score": -2.0,
    },
]


# ---------------------------------------------------------------- helpers


def jsonl_bytes(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in records)


def write(path: Path, data: bytes | str) -> Path:
    """Write raw bytes (or UTF-8 text), compressing by the file's suffix."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def write_lines(path: Path, lines: list[bytes | str]) -> Path:
    """A JSONL-ish file from raw lines (each gets a trailing newline); bad bytes allowed."""
    return write(path, b"".join((x.encode("utf-8") if isinstance(x, str) else x) + b"\n" for x in lines))


def write_parquet(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def read(paths, **kw) -> tuple[list[Document], ReadStats]:
    """resolve + read everything with ReaderConfig(**kw)."""
    config = ReaderConfig(**kw)
    stats = ReadStats()
    docs = list(read_documents(resolve_inputs(list(paths), config), config, stats))
    return docs, stats


def read_until_error(paths, **kw) -> tuple[list[Document], InputError, ReadStats]:
    """Read with on_error="raise"; return the documents yielded before the error, and the error."""
    config = ReaderConfig(on_error="raise", **kw)
    stats = ReadStats()
    docs = []
    with pytest.raises(InputError) as info:
        for doc in read_documents(resolve_inputs(list(paths), config), config, stats):
            docs.append(doc)
    return docs, info.value, stats


def summary(doc: Document) -> tuple:
    """Everything but the source (which names the file and line or row)."""
    return (doc.text, doc.id, doc.domain, doc.title, doc.timestamp, doc.metadata)


EXPECTED = [
    (r["text"], r["id"], r["domain"], r["title"], r["timestamp"], {"lang": r["lang"], "score": r["score"]})
    for r in RECORDS
]


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "name", ["c.jsonl", "c.jsonl.gz", "c.jsonl.zst", "c.ndjson", "c.json", "c.ndjson.gz"]
)
def test_jsonl_variants_read_the_same_documents(tmp_path, name):
    path = write(tmp_path / name, jsonl_bytes(RECORDS))
    docs, stats = read([path])
    assert [summary(d) for d in docs] == EXPECTED
    assert [d.source for d in docs] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert stats.files == 1 and stats.documents == 3 and not stats.skipped
    assert stats.bytes_done == path.stat().st_size


def test_parquet_reads_the_same_documents_as_jsonl(tmp_path):
    parquet = write_parquet(tmp_path / "c.parquet", RECORDS)
    jsonl = write(tmp_path / "c.jsonl", jsonl_bytes(RECORDS))
    from_parquet, _ = read([parquet])
    from_jsonl, _ = read([jsonl])
    assert [summary(d) for d in from_parquet] == [summary(d) for d in from_jsonl] == EXPECTED
    assert [d.source for d in from_parquet] == [f"{parquet}:row {i}" for i in (1, 2, 3)]


def test_parquet_extra_columns_become_json_safe_metadata(tmp_path):
    import datetime as dt

    path = write_parquet(
        tmp_path / "t.parquet",
        [{"text": "hello", "day": dt.date(2021, 3, 4), "blob": b"xy", "tags": ["p", "q"], "n": None}],
    )
    (doc,) = read([path])[0]
    assert doc.metadata == {"day": "2021-03-04", "blob": "xy", "tags": ["p", "q"], "n": None}
    assert doc.id == f"{path}:row 1" and doc.domain == "t"
    json.dumps(doc.record())  # storable as JSON


def test_parquet_rows_are_read_across_batches(tmp_path):
    n = 2500  # more than one 1024-row batch
    path = write_parquet(tmp_path / "big.parquet", [{"id": i, "text": f"doc {i}"} for i in range(n)])
    docs, stats = read([path])
    assert [d.id for d in docs] == [str(i) for i in range(n)]
    assert stats.documents == n


@pytest.mark.parametrize(
    "name", ["notes.txt", "notes.md", "notes.text", "notes.rst", "notes.txt.gz", "notes.txt.zst"]
)
def test_text_file_is_one_document(tmp_path, name):
    content = "Line one.\n\nLine three,  spaced.\n"
    path = write(tmp_path / name, content)
    (doc,) = read([path])[0]
    assert doc.text == content  # kept byte for byte, blank lines included
    assert doc.id == doc.source == str(path)
    assert doc.domain == "notes"
    assert doc.title is None and doc.timestamp is None and doc.metadata == {}


def test_text_blank_line_split_names_the_starting_line(tmp_path):
    path = write(tmp_path / "p.txt", "\n\nfirst para\nstill first\n\n\n  \nsecond para\n\nthird\n")
    docs, stats = read([path], text_split="blank-line")
    assert [d.text for d in docs] == ["first para\nstill first\n", "second para\n", "third\n"]
    assert [d.source for d in docs] == [f"{path}:3", f"{path}:8", f"{path}:10"]
    assert [d.id for d in docs] == [d.source for d in docs]
    assert stats.documents == 3 and not stats.skipped


def test_text_blank_line_split_without_trailing_newline(tmp_path):
    path = write(tmp_path / "p.txt", "a\n\nb")
    docs, _ = read([path], text_split="blank-line")
    assert [(d.text, d.source) for d in docs] == [("a\n", f"{path}:1"), ("b", f"{path}:3")]


def test_utf8_byte_order_mark_is_not_part_of_the_data(tmp_path):
    bom = b"\xef\xbb\xbf"
    jsonl = write(tmp_path / "bom.jsonl", bom + jsonl_bytes(RECORDS[:1]))
    text = write(tmp_path / "bom.txt", bom + b"hello\n")
    assert [summary(d) for d in read([jsonl])[0]] == EXPECTED[:1]
    assert read([text])[0][0].text == "hello\n"


def test_crlf_line_endings(tmp_path):
    path = write(tmp_path / "w.jsonl", b'{"text": "a"}\r\n\r\n{"text": "b"}\r\n')
    docs, stats = read([path])
    assert [(d.text, d.source) for d in docs] == [("a", f"{path}:1"), ("b", f"{path}:3")]
    assert not stats.skipped


def test_blank_lines_inside_jsonl_are_ignored_but_counted_as_lines(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", ["", '{"text": "x"}', "   ", "\t", '{"text": "y"}', ""])
    docs, stats = read([path])
    assert [d.id for d in docs] == [f"{path}:2", f"{path}:5"]
    assert stats.documents == 2 and not stats.skipped


def test_documents_come_out_in_input_order_across_files(tmp_path):
    a = write(tmp_path / "z.jsonl", jsonl_bytes([{"text": "z1"}, {"text": "z2"}]))
    b = write(tmp_path / "a.txt", "a-text")
    docs, stats = read([a, b])
    assert [d.text for d in docs] == ["z1", "z2", "a-text"]
    assert stats.files == 2 and stats.documents == 3
    assert stats.bytes_done == a.stat().st_size + b.stat().st_size


def test_multi_frame_zst_is_read_whole(tmp_path):
    data = jsonl_bytes([{"text": f"t{i}"} for i in range(6)])
    cut = data.index(b"\n", len(data) // 2) + 1
    path = tmp_path / "m.jsonl.zst"
    path.write_bytes(zstandard.compress(data[:cut]) + zstandard.compress(data[cut:]))
    assert [d.text for d in read([path])[0]] == [f"t{i}" for i in range(6)]


def test_multi_member_gz_is_read_whole(tmp_path):
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(
        gzip.compress(jsonl_bytes([{"text": "a"}])) + gzip.compress(jsonl_bytes([{"text": "b"}]))
    )
    assert [d.text for d in read([path])[0]] == ["a", "b"]


# ---------------------------------------------------------------- fields


def test_alternative_text_and_id_fields(tmp_path):
    path = write_lines(
        tmp_path / "f.jsonl",
        [
            json.dumps({"doc_id": "x1", "body": "hello", "text": "not the text", "id": "not the id"}),
            json.dumps({"body": "no id here", "extra": [1, 2]}),
            json.dumps({"doc_id": 7, "body": "int id"}),
        ],
    )
    docs, _ = read([path], text_field="body", id_field="doc_id")
    assert [d.text for d in docs] == ["hello", "no id here", "int id"]
    assert [d.id for d in docs] == ["x1", f"{path}:2", "7"]
    # the default field names are ordinary metadata once other fields are configured
    assert docs[0].metadata == {"text": "not the text", "id": "not the id"}
    assert docs[1].metadata == {"extra": [1, 2]}


def test_missing_id_is_path_and_line(tmp_path):
    path = write_lines(tmp_path / "n.jsonl", ["", '{"text": "one"}', '{"text": "two", "id": null}'])
    assert [d.id for d in read([path])[0]] == [f"{path}:2", f"{path}:3"]


def test_configured_fields_are_not_metadata(tmp_path):
    rec = {"text": "t", "id": "i", "title": "T", "domain": "d", "timestamp": 5, "a": 1, "b": {"c": None}}
    (doc,) = read([write_lines(tmp_path / "m.jsonl", [json.dumps(rec)])])[0]
    assert doc.metadata == {"a": 1, "b": {"c": None}}
    assert (doc.title, doc.domain, doc.timestamp) == ("T", "d", 5)
    assert doc.record() == {
        "id": "i",
        "domain": "d",
        "title": "T",
        "timestamp": 5,
        "source": doc.source,
        "metadata": {"a": 1, "b": {"c": None}},
    }


def test_custom_title_domain_and_timestamp_fields(tmp_path):
    rec = {"text": "t", "headline": "H", "src": "blog", "date": "2021-03-04", "title": "meta"}
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(rec)])
    (doc,) = read([path], title_field="headline", domain_field="src", timestamp_field="date")[0]
    assert (doc.title, doc.domain, doc.timestamp) == ("H", "blog", DAY)
    assert doc.metadata == {"title": "meta"}


def test_title_is_optional_and_stringified(tmp_path):
    path = write_lines(
        tmp_path / "t.jsonl", ['{"text": "a"}', '{"text": "b", "title": 42}', '{"text": "c", "title": "C"}']
    )
    assert [d.title for d in read([path])[0]] == [None, "42", "C"]


@pytest.mark.parametrize(
    "value, expected",
    [
        (TS, TS),
        (TS + 0.9, TS),
        (str(TS), TS),
        ("2021-03-04T05:06:07Z", TS),
        ("2021-03-04T07:06:07+02:00", TS),
        ("2021-03-04T05:06:07", TS),  # naive: UTC
        ("2021-03-04", DAY),  # naive date: midnight UTC
        (0, 0),
        (-86400, -86400),
        ("-86400", -86400),
        ("1614834367.5", 1614834367),  # a float string, like a float number
        (None, None),
        ("", None),
    ],
)
def test_timestamps_parse_to_epoch_seconds(tmp_path, value, expected):
    path = write_lines(tmp_path / "ts.jsonl", [json.dumps({"text": "x", "timestamp": value})])
    (doc,) = read([path])[0]
    assert doc.timestamp == expected
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize("raw", ['"yesterday"', '"2021-13-01"', "true", "[1]", '{"s": 1}', "1614834367000000", '"1e30"',
                                 '"nan"', '"inf"'])
def test_bad_timestamp_is_an_error(tmp_path, raw):
    path = write_lines(tmp_path / "ts.jsonl", ['{"text": "ok"}', '{"text": "x", "timestamp": ' + raw + "}"])
    docs, err, _ = read_until_error([path])
    assert (err.reason, err.line, err.path) == ("bad_timestamp", 2, str(path))
    assert f"{path}:2" in str(err) and "timestamp" in str(err)
    assert [d.text for d in docs] == ["ok"]
    docs, stats = read([path], on_error="skip")
    assert [d.text for d in docs] == ["ok"] and stats.skipped == {"bad_timestamp": 1}


# ---------------------------------------------------------------- domains


def test_domain_field_wins_over_the_file_name(tmp_path):
    path = write_lines(tmp_path / "books.jsonl", ['{"text": "a", "domain": "fiction"}', '{"text": "b"}'])
    assert [d.domain for d in read([path])[0]] == ["fiction", "books"]


@pytest.mark.parametrize(
    "name, label",
    [
        ("books.jsonl.gz", "books"),
        ("books.jsonl.zst", "books"),
        ("books.jsonl", "books"),
        ("web.ndjson", "web"),
        ("notes.txt.gz", "notes"),
        ("table.parquet", "table"),
        ("v1.2.jsonl", "v1.2"),
    ],
)
def test_default_domain_is_the_file_name_without_extensions(tmp_path, name, label):
    path = tmp_path / name
    if name.endswith(".parquet"):
        write_parquet(path, [{"text": "x"}])
    else:
        write(path, jsonl_bytes([{"text": "x"}]) if "json" in name else "x")
    (inp,) = resolve_inputs([path])
    assert inp.domain == label
    assert read([path])[0][0].domain == label


def test_one_domain_overrides_every_input_and_the_field(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", ['{"text": "a", "domain": "field"}'])
    b = write(tmp_path / "b.txt", "b")
    docs, _ = read([a, b], domains=("X",))
    assert [d.domain for d in docs] == ["X", "X"]
    # the overridden field is not kept as metadata either
    assert docs[0].metadata == {}


def test_one_domain_per_input(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", ['{"text": "a1", "domain": "field"}', '{"text": "a2"}'])
    d = tmp_path / "dir"
    write(d / "x.txt", "x")
    write(d / "sub" / "y.txt", "y")
    docs, _ = read([a, d], domains=["first", "second"])
    assert [(doc.text, doc.domain) for doc in docs] == [
        ("a1", "first"),
        ("a2", "first"),
        ("y", "second"),
        ("x", "second"),
    ]


def test_domain_count_mismatch_raises(tmp_path):
    a = write(tmp_path / "a.txt", "a")
    b = write(tmp_path / "b.txt", "b")
    c = write(tmp_path / "c.txt", "c")
    with pytest.raises(InputError) as info:
        resolve_inputs([a, b, c], ReaderConfig(domains=("x", "y")))
    assert info.value.reason == "bad_domain"
    assert "2 times for 3 inputs" in str(info.value)


@pytest.mark.parametrize("value", ["3", "null", '""', '"  "', '["x"]'])
def test_bad_domain_field(tmp_path, value):
    path = write_lines(tmp_path / "d.jsonl", ['{"text": "x", "domain": ' + value + "}"])
    if value == "null":  # null is "no domain": the file name is used
        assert read([path])[0][0].domain == "d"
        return
    _, err, _ = read_until_error([path])
    assert (err.reason, err.line) == ("bad_domain", 1)
    docs, stats = read([path], on_error="skip")
    assert docs == [] and stats.skipped == {"bad_domain": 1}


# ---------------------------------------------------------------- resolving inputs


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.jsonl", ("jsonl", None)),
        ("a.JSONL", ("jsonl", None)),
        ("a.ndjson.gz", ("jsonl", "gz")),
        ("a.json.zst", ("jsonl", "zst")),
        ("a.txt", ("text", None)),
        ("a.md.gz", ("text", "gz")),
        ("a.parquet", ("parquet", None)),
        ("a.parquet.gz", None),
        ("a.csv", None),
        ("a.gz", None),
        ("jsonl", None),
    ],
)
def test_detect_format(name, expected):
    assert detect_format(Path(name)) == expected


def test_detect_format_forced():
    assert detect_format(Path("data.weird"), "jsonl") == ("jsonl", None)
    assert detect_format(Path("data.weird.gz"), "text") == ("text", "gz")


def test_directory_is_recursive_sorted_and_skips_hidden_and_unknown(tmp_path, caplog):
    root = tmp_path / "corpus"
    for rel in ["b.jsonl", "a.txt", "sub/c.jsonl.gz", "sub/deeper/d.parquet", "a2.md"]:
        p = root / rel
        if rel.endswith(".parquet"):
            p.parent.mkdir(parents=True, exist_ok=True)
            write_parquet(p, [{"text": rel}])
        else:
            write(p, jsonl_bytes([{"text": rel}]) if "json" in rel else rel)
    for rel in [".hidden.jsonl", ".git/x.jsonl", "sub/.cache/y.txt", "README", "data.csv", "sub/img.png"]:
        write(root / rel, "ignored")
    inputs = resolve_inputs([root])
    assert [i.path.relative_to(root).as_posix() for i in inputs] == [
        "a.txt",
        "a2.md",
        "b.jsonl",
        "sub/c.jsonl.gz",
        "sub/deeper/d.parquet",
    ]
    assert [(i.format, i.compression) for i in inputs] == [
        ("text", None),
        ("text", None),
        ("jsonl", None),
        ("jsonl", "gz"),
        ("parquet", None),
    ]
    assert all(isinstance(i, InputFile) and i.display == str(i.path) for i in inputs)
    assert "ignored 3 file(s)" in caplog.text  # README, data.csv, img.png: not silent
    docs, _ = read([root])
    assert [d.text for d in docs] == ["a.txt", "a2.md", "b.jsonl", "sub/c.jsonl.gz", "sub/deeper/d.parquet"]


def test_glob_expands_sorted(tmp_path):
    for name in ["b.jsonl", "a.jsonl", "c.txt", "sub/d.jsonl"]:
        write(tmp_path / name, jsonl_bytes([{"text": name}]))
    assert [i.path.name for i in resolve_inputs([str(tmp_path / "*.jsonl")])] == ["a.jsonl", "b.jsonl"]
    recursive = resolve_inputs([str(tmp_path / "**" / "*.jsonl")])
    assert [i.path.relative_to(tmp_path).as_posix() for i in recursive] == [
        "a.jsonl",
        "b.jsonl",
        "sub/d.jsonl",
    ]
    # a glob that matches a directory reads it like a directory argument
    assert [i.path.name for i in resolve_inputs([str(tmp_path / "*")])] == ["a.jsonl", "b.jsonl", "c.txt", "d.jsonl"]


def test_glob_matching_nothing_is_missing(tmp_path):
    write(tmp_path / "a.jsonl", jsonl_bytes([{"text": "a"}]))
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(InputError) as info:
        resolve_inputs([tmp_path / "a.jsonl", pattern])
    assert (info.value.reason, info.value.path, info.value.line) == ("missing", pattern, None)


def test_missing_path(tmp_path):
    with pytest.raises(InputError) as info:
        resolve_inputs([tmp_path / "nope.jsonl"])
    assert info.value.reason == "missing" and "nope.jsonl" in str(info.value)


def test_no_inputs_at_all():
    with pytest.raises(InputError) as info:
        resolve_inputs([])
    assert info.value.reason == "missing"


def test_directory_without_corpus_files_is_missing(tmp_path):
    write(tmp_path / "d" / "notes.csv", "a,b")
    with pytest.raises(InputError) as info:
        resolve_inputs([tmp_path / "d"])
    assert info.value.reason == "missing"


def test_explicit_file_with_unknown_extension(tmp_path):
    path = write(tmp_path / "data.csv", '{"text": "x"}\n')
    with pytest.raises(InputError) as info:
        resolve_inputs([path])
    assert (info.value.reason, info.value.path) == ("unknown_format", str(path))
    assert "--format" in str(info.value)


def test_format_forces_a_reader_for_an_odd_name(tmp_path):
    path = write(tmp_path / "dump.data", jsonl_bytes(RECORDS))
    (inp,) = resolve_inputs([path], ReaderConfig(format="jsonl"))
    assert (inp.format, inp.compression, inp.domain) == ("jsonl", None, "dump.data")
    assert [summary(d) for d in read([path], format="jsonl")[0]] == EXPECTED
    gz = write(tmp_path / "dump.log.gz", "plain text")
    assert [d.text for d in read([gz], format="text")[0]] == ["plain text"]


# ---------------------------------------------------------------- bad lines, both policies

GOOD = [json.dumps({"text": f"good {i}"}) for i in range(4)]

BAD_LINES = [
    # (case, bad line, reason, fragments the message must contain)
    ("malformed_json", b'{"text": "unterminated', "bad_json", ["malformed JSON"]),
    ("trailing_garbage", b'{"text": "x"} extra', "bad_json", ["malformed JSON"]),
    ("not_an_object_list", b'["text", "x"]', "bad_json", ["expected a JSON object", "list"]),
    ("not_an_object_str", b'"just a string"', "bad_json", ["expected a JSON object", "str"]),
    ("missing_text", b'{"body": "x", "id": "q"}', "missing_text", ["--text-field", "fields: body, id"]),
    ("missing_text_empty_obj", b"{}", "missing_text", ["--text-field", "fields: none"]),
    ("text_not_string", b'{"text": 5}', "bad_text", ["int", "not a string"]),
    ("text_null", b'{"text": null}', "bad_text", ["NoneType"]),
    ("text_list", b'{"text": ["a"]}', "bad_text", ["list"]),
    ("empty_text", b'{"text": ""}', "empty_text", ["empty"]),
    ("whitespace_text", b'{"text": " \\n\\t "}', "empty_text", ["empty"]),
    ("non_utf8", b'{"text": "caf\xe9"}', "non_utf8", ["invalid UTF-8", "caf"]),
    ("bad_id", b'{"text": "x", "id": [1]}', "bad_id", ["'id'"]),
    ("bool_id", b'{"text": "x", "id": true}', "bad_id", ["'id'"]),
    ("empty_id", b'{"text": "x", "id": ""}', "bad_id", ["'id'"]),
    ("bad_timestamp", b'{"text": "x", "timestamp": "soon"}', "bad_timestamp", ["timestamp"]),
]


def bad_file(tmp_path: Path, bad: bytes, name: str = "mixed.jsonl") -> Path:
    """good, blank, good, BAD (line 4), good, BAD (line 6), good: 6 records, 2 of them bad."""
    return write_lines(tmp_path / name, [GOOD[0], "", GOOD[1], bad, GOOD[2], bad, GOOD[3]])


@pytest.mark.parametrize("case, bad, reason, fragments", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_line_raises_with_location(tmp_path, case, bad, reason, fragments):
    path = bad_file(tmp_path, bad)
    docs, err, _ = read_until_error([path])
    assert (err.reason, err.line, err.path) == (reason, 4, str(path))
    assert str(err).startswith(f"{path}:4: ")
    for fragment in fragments:
        assert fragment in str(err)
    assert [d.text for d in docs] == ["good 0", "good 1"]  # what came before the error


@pytest.mark.parametrize("case, bad, reason, fragments", BAD_LINES, ids=[c[0] for c in BAD_LINES])
def test_bad_line_is_skipped_and_counted(tmp_path, case, bad, reason, fragments):
    path = bad_file(tmp_path, bad)
    docs, stats = read([path], on_error="skip")
    assert [d.text for d in docs] == ["good 0", "good 1", "good 2", "good 3"]
    assert [d.source for d in docs] == [f"{path}:{n}" for n in (1, 3, 5, 7)]
    assert stats.skipped == {reason: 2}
    assert [e.split(": ")[0] for e in stats.skipped_examples] == [f"{path}:4", f"{path}:6"]
    assert stats.documents == len(docs) == 4
    # nothing dropped silently: every non-blank line is a document or a counted skip
    assert stats.documents + sum(stats.skipped.values()) == 6
    assert stats.to_dict()["skipped_total"] == 2


@pytest.mark.parametrize("compression", ["gz", "zst"])
def test_bad_line_numbers_in_compressed_files(tmp_path, compression):
    path = bad_file(tmp_path, b'{"text": "caf\xe9"}', f"mixed.jsonl.{compression}")
    _, err, _ = read_until_error([path])
    assert (err.reason, err.line) == ("non_utf8", 4)
    docs, stats = read([path], on_error="skip")
    assert len(docs) == 4 and stats.skipped == {"non_utf8": 2}


def test_all_lines_bad_is_not_also_an_empty_file(tmp_path):
    path = write_lines(tmp_path / "all_bad.jsonl", ["{", "[]", '{"text": 1}'])
    docs, stats = read([path], on_error="skip")
    assert docs == [] and stats.skipped == {"bad_json": 2, "bad_text": 1}


def test_skipped_examples_are_capped_but_counts_are_not(tmp_path):
    path = write_lines(tmp_path / "many.jsonl", ["{"] * 30 + [GOOD[0]])
    docs, stats = read([path], on_error="skip")
    assert len(docs) == 1 and stats.skipped == {"bad_json": 30}
    assert len(stats.skipped_examples) == 20
    assert stats.skipped_examples[0].startswith(f"{path}:1: ")


def test_parquet_bad_rows_both_policies(tmp_path):
    path = write_parquet(
        tmp_path / "rows.parquet",
        [{"text": "a"}, {"text": None}, {"text": "  "}, {"text": "d"}],
    )
    docs, err, _ = read_until_error([path])
    assert (err.reason, err.line, [d.text for d in docs]) == ("bad_text", 2, ["a"])
    docs, stats = read([path], on_error="skip")
    assert [d.text for d in docs] == ["a", "d"]
    assert stats.skipped == {"bad_text": 1, "empty_text": 1}
    assert stats.documents + sum(stats.skipped.values()) == 4


def test_text_blank_line_split_drops_a_bad_block_whole(tmp_path):
    path = write(tmp_path / "p.txt", b"one\ntwo \xff\nthree \xfe\nfour\n\nfive\nsix\n\n\xffseven\n")
    _, err, _ = read_until_error([path], text_split="blank-line")
    assert (err.reason, err.line) == ("non_utf8", 2)
    docs, stats = read([path], text_split="blank-line", on_error="skip")
    # block 1 (lines 1-4) and block 3 (line 9) hold bad bytes: each is dropped whole, counted once
    assert [(d.text, d.source) for d in docs] == [("five\nsix\n", f"{path}:6")]
    assert stats.skipped == {"non_utf8": 2}
    assert [e.split(": ")[0] for e in stats.skipped_examples] == [f"{path}:2", f"{path}:9"]
    assert stats.documents + sum(stats.skipped.values()) == 3  # three blocks


# ---------------------------------------------------------------- bad files, both policies


def _zst_truncated(data: bytes, intact_lines: int = 10) -> bytes:
    """Two frames, the second cut off: the first frame's lines are intact."""
    lines = data.splitlines(keepends=True)
    first, second = b"".join(lines[:intact_lines]), zstandard.compress(b"".join(lines[intact_lines:]))
    return zstandard.compress(first) + second[: len(second) // 2]


TWENTY = jsonl_bytes([{"text": f"line {i} " + "x" * 40} for i in range(20)])

BAD_FILES = [
    # (case, file name, raw bytes, reason, line, config)
    ("empty_jsonl", "e.jsonl", b"", "empty_file", None, {}),
    ("empty_txt", "e.txt", b"", "empty_file", None, {}),
    ("empty_parquet", "e.parquet", b"", "empty_file", None, {}),
    ("blank_lines_jsonl", "b.jsonl", b"\n\n   \n\t\n", "empty_file", None, {}),
    ("blank_lines_txt", "b.txt", b"\n \n\n", "empty_text", None, {}),
    ("blank_lines_txt_split", "b.txt", b"\n \n\n", "empty_file", None, {"text_split": "blank-line"}),
    ("empty_gz", "e.jsonl.gz", gzip.compress(b""), "empty_file", None, {}),
    ("non_utf8_txt", "n.txt", b"fine\nalso fine\nbad \xc3\x28 here\nfine\n", "non_utf8", 3, {}),
    ("non_utf8_txt_gz", "n.txt.gz", gzip.compress(b"ok\n\xff\n"), "non_utf8", 2, {}),
    ("corrupt_gz", "c.jsonl.gz", b"\x1f\x8b this is not gzip data", "corrupt_file", 1, {}),
    ("not_gz_at_all", "c.jsonl.gz", b'{"text": "plain"}\n', "corrupt_file", 1, {}),
    ("truncated_gz", "t.jsonl.gz", gzip.compress(TWENTY)[:-12], "corrupt_file", None, {}),
    ("gz_trailing_garbage", "g.jsonl.gz", gzip.compress(TWENTY) + b"garbage", "corrupt_file", None, {}),
    ("corrupt_zst", "c.jsonl.zst", b"(\xb5/\xfd garbage garbage garbage", "corrupt_file", 1, {}),
    ("not_zst_at_all", "c.jsonl.zst", b'{"text": "plain"}\n', "corrupt_file", 1, {}),
    ("truncated_zst", "t.jsonl.zst", _zst_truncated(TWENTY), "corrupt_file", 11, {}),
    ("corrupt_parquet", "c.parquet", b"PAR1 definitely not parquet", "corrupt_file", None, {}),
]


def _write_bad(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, name, data, reason, line, kw", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_raises(tmp_path, case, name, data, reason, line, kw):
    path = _write_bad(tmp_path, name, data)
    good = write(tmp_path / "zz_good.jsonl", jsonl_bytes([{"text": "after"}]))
    _, err, _ = read_until_error([path, good], **kw)
    assert err.reason == reason and err.path == str(path)
    if line is not None:
        assert err.line == line and str(err).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("case, name, data, reason, line, kw", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_skipped_and_the_next_file_is_read(tmp_path, case, name, data, reason, line, kw):
    path = _write_bad(tmp_path, name, data)
    good = write(tmp_path / "zz_good.jsonl", jsonl_bytes([{"text": "after"}]))
    docs, stats = read([path, good], on_error="skip", **kw)
    assert docs[-1].text == "after"
    assert stats.skipped == {reason: 1}
    assert len(stats.skipped_examples) == 1 and stats.skipped_examples[0].startswith(str(path))
    assert stats.files == 2 and stats.documents == len(docs)
    if case == "truncated_zst":
        # the intact first frame is still read; the cut-off line is the counted error
        assert [d.text for d in docs[:-1]] == [f"line {i} " + "x" * 40 for i in range(10)]
    else:
        assert len(docs) == 1
    assert stats.bytes_done == path.stat().st_size + good.stat().st_size


def test_parquet_without_the_text_column(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", [{"body": "x", "id": 1}])
    _, err, _ = read_until_error([path])
    assert (err.reason, err.line) == ("missing_text", None)
    assert "--text-field" in str(err) and "body, id" in str(err)
    docs, stats = read([path], on_error="skip")
    assert docs == [] and stats.skipped == {"missing_text": 1}
    assert [d.text for d in read([path], text_field="body")[0]] == ["x"]


def test_a_file_deleted_after_resolving_is_unreadable(tmp_path):
    path = write(tmp_path / "gone.jsonl", jsonl_bytes([{"text": "x"}]))
    config = ReaderConfig(on_error="skip")
    inputs = resolve_inputs([path], config)
    path.unlink()
    stats = ReadStats()
    assert list(read_documents(inputs, config, stats)) == []
    assert stats.skipped == {"unreadable": 1}


def test_read_stats_to_dict(tmp_path):
    path = bad_file(tmp_path, b"{")
    _, stats = read([path], on_error="skip")
    d = stats.to_dict()
    assert d == {
        "files": 1,
        "documents": 4,
        "skipped": {"bad_json": 2},
        "skipped_total": 2,
        "skipped_examples": stats.skipped_examples,
        "non_finite_nulled": 0,
    }
    json.dumps(d)
