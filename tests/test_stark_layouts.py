"""The released STARK layouts: exports of a generated run (every image module), imports back,
hand-written fixtures in each released layout (tests/data/stark/), a loader written the way a
STARK user's script reads the data, and refusals of hostile or absurd records."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mcu_sim.cli import app
from mcu_sim.dataset.export import export_run
from mcu_sim.dataset.importer import import_stark
from mcu_sim.dataset.stark_common import MODULE_TO_STARK, album_positions, focus
from mcu_sim.personas.schema import Episode
from mcu_sim.runner.outputs import RunDir
from mcu_sim.testing.fake_openai import FakeOpenAIServer
from mcu_sim.viewer.sample import build_sample_run, edit_episode, write_png

DATA = Path(__file__).parent / "data" / "stark"


@pytest.fixture
def run_dir(fake_openai: FakeOpenAIServer, tmp_path: Path) -> Path:
    """ep-00000011: three sessions, images from every module (retrieval, web search with a
    source URL, personalized text-to-image) and a face."""
    root = tmp_path / "run"
    build_sample_run(root, fake_openai, sessions=3)

    def modules(data: dict[str, Any]) -> None:
        sharing = [r for r in data["image_requests"] if r["origin"] == "sharing"]
        aligned = [r for r in sharing if r["status"] == "aligned" and r["image"]]
        for n, request in enumerate(aligned):
            if request["image"]["module"] == "web_search":
                request["image"]["source_url"] = f"https://images.example.org/{n}.png"
        own = write_png(root / "images/ep-00000011/pt2i.png", (40, 40), (200, 10, 10))
        target = next(r for r in sharing if r["status"] != "aligned")
        image = {"path": "images/ep-00000011/pt2i.png", "module": "personalized_t2i", **own}
        target.update(status="aligned", reason=None, module="personalized_t2i", image=image)
        if not any(r["image"]["module"] == "retrieval" for r in aligned):
            # a retrieved photo too: the album's first one, shared again in a later turn
            album = next(r for r in data["image_requests"] if r["origin"] == "album")
            target = next(r for r in sharing if r["status"] != "aligned")
            target.update(status="aligned", reason=None, module="retrieval", image=album["image"])

    edit_episode(root, "ep-00000011", modules)
    return root


def _episode(run: Path, episode_id: str) -> Episode:
    return Episode.model_validate(RunDir(run).read_episode(episode_id))


def held_by_both(episode: Episode) -> dict[str, Any]:
    """Every field stark-hf and stark-json both hold, in comparable form."""
    attribute, _ = focus(episode)
    demo = episode.demographics
    ordered_events = {s.event_id: n for n, s in enumerate(episode.sessions, start=1)}
    by_id = {e.id: e for e in episode.events.events}
    positions = album_positions(episode)
    return {
        "person": (demo.name, demo.age, demo.gender, demo.birthplace, demo.residence),
        "persona": (episode.persona_category, attribute.sentence, *attribute.entity),
        "narrative": (episode.narrative.relation, episode.narrative.sentence_form),
        "events": [
            (
                by_id[s.event_id].event,
                by_id[s.event_id].date,
                by_id[s.event_id].caused_by
                and (
                    ordered_events.get(by_id[s.event_id].caused_by.id),
                    by_id[s.event_id].caused_by.time_interval,
                    by_id[s.event_id].caused_by.experience_op,
                    by_id[s.event_id].caused_by.experience,
                ),
            )
            for s in episode.sessions
        ],
        "sessions": [
            (s.index, s.date, s.event, s.time_interval, s.experience, s.experience_op)
            for s in episode.sessions
        ],
        "turns": [
            [
                (
                    t.id,
                    t.speaker,
                    t.utterance,
                    t.sharing
                    and (
                        t.sharing.rationale,
                        t.sharing.image_description,
                        t.sharing.image_source,
                        t.sharing.keywords,
                        positions.get(t.sharing.image_id_from_mobile)
                        if isinstance(t.sharing.image_id_from_mobile, int)
                        else t.sharing.image_id_from_mobile,
                    ),
                )
                for t in s.turns
            ]
            for s in episode.sessions
        ],
        "album_size": len(episode.device_images),
    }


def images_of(episode: Episode) -> dict[str, Any]:
    """What stark-hf also holds: each sharing turn's image (hash, module), the face."""
    requests = {r.id: r for r in episode.image_requests}
    shared = {}
    for session in episode.sessions:
        for turn in session.turns:
            request = requests.get(turn.request_id or "")
            if request and request.status == "aligned" and request.image:
                module = MODULE_TO_STARK.get(request.image.module, request.image.module)
                shared[(session.index, turn.id)] = (request.image.sha256, module)
    face = episode.face.image.sha256 if episode.face.image else None
    return {"shared": shared, "face": face}


def test_round_trip_through_stark_hf(run_dir: Path, tmp_path: Path) -> None:
    folder = export_run(run_dir, "stark-hf", tmp_path / "stark-hf", keep_marked=True)
    report = import_stark("stark-hf", folder, tmp_path / "back")
    assert report.imported == ["ep-00000011"] and report.refused == []
    before, after = _episode(run_dir, "ep-00000011"), _episode(tmp_path / "back", "ep-00000011")
    assert held_by_both(after) == held_by_both(before)
    mine, theirs = images_of(before), images_of(after)
    assert theirs == mine
    assert {m for _, m in mine["shared"].values()} == {"p-t2i", "retrieval", "web"}
    assert after.face.prompt == before.face.prompt and after.face.status == "generated"
    _, inference = focus(before)
    assert after.commonsense[0].text == inference.text
    for request in after.image_requests:  # every joined image is a real copied file
        if request.image:
            assert (tmp_path / "back" / request.image.path).is_file()
    row = pq.read_table(folder / "stark.parquet").to_pylist()[0]
    keys = [k for v in json.loads(row["session1:images_key"]) for k in [v] if k]
    assert any(k.startswith("url:") for k in keys) and row["human_face_image_key"][:5] == "face:"


def test_round_trip_through_stark_json(run_dir: Path, tmp_path: Path) -> None:
    target = export_run(run_dir, "stark-json", tmp_path / "stark_0.json", keep_marked=True)
    report = import_stark("stark-json", target, tmp_path / "back")
    assert report.imported == ["ep-00000011"] and report.refused == []
    before, after = _episode(run_dir, "ep-00000011"), _episode(tmp_path / "back", "ep-00000011")
    assert held_by_both(after) == held_by_both(before)
    # stark-json also holds the album's descriptions, in album order
    ordered = sorted(before.device_images, key=lambda d: album_positions(before)[d.id])
    assert [d.description for d in after.device_images] == [d.description for d in ordered]


def stark_user_loader(path: Path) -> list[dict[str, Any]]:
    """Reads stark-json the way a script written for the release does (its post-processing
    step's loop; ``ast.literal_eval`` where such a script calls ``eval``)."""
    with open(path, encoding="utf-8") as f:
        dataset = json.load(f)
    out = []
    for instance in dataset:
        events = ast.literal_eval(instance["event-sequence"])
        for idx, session in enumerate(instance["episode"]):
            dialog = session[f"session{idx + 1}:dialogue"]
            album = ast.literal_eval(session[f"session{idx + 1}:mobile_device"])
            out.append(
                {
                    "uid": instance["unique_id"],
                    "persona": instance["persona-attr:sent"],
                    "date": session[f"seesion{idx + 1}:dialogue:date"],
                    "interval": session[f"seesion{idx + 1}:dialogue:time_interval"],
                    "event": events[idx]["event"],
                    "album": [a["image_description"] for a in album],
                    "turns": [(u["utter_id"], u["speaker"], u["utter"]) for u in dialog],
                    "silent": [u for u in dialog if u["utter"] == "" and u["sharing_info"] == ""],
                    "shared": [u["sharing_info"] for u in dialog if u["sharing_info"] != ""],
                }
            )
    return out


def stark_dialogue_user_loader(folder: Path) -> list[dict[str, Any]]:
    """Reads stark-hf the way a stark-dialogue user does: rows, ``number_of_session``,
    per-session JSON lists, image keys with their prefixes stripped."""
    rows = pq.read_table(folder / "stark.parquet").to_pylist()
    found = []
    for row in rows:
        for n in range(1, int(row["number_of_session"]) + 1):
            speakers = json.loads(row[f"session{n}:speakers"])
            utterances = json.loads(row[f"session{n}:utterances"])
            for key in json.loads(row[f"session{n}:images_key"]):
                if key:
                    sub = "images-url" if key.startswith("url:") else "images"
                    found.append(next((folder / sub).glob(key.removeprefix("url:") + ".*")))
            assert len(speakers) == len(utterances)
        face = row["human_face_image_key"].removeprefix("face:")
        found.append(next((folder / "faces").glob(face + ".*")))
    return [{"images": found}]


def test_loaders_written_for_the_release_run_on_our_exports(run_dir: Path, tmp_path: Path):
    episode = _episode(run_dir, "ep-00000011")
    sessions = stark_user_loader(export_run(run_dir, "stark-json", tmp_path / "s.json"))
    assert [s["date"] for s in sessions] == [s.date.strftime("%Y.%m.%d") for s in episode.sessions]
    assert sessions[0]["interval"] == "nan" and sessions[0]["uid"] == "ep-00000011"
    assert [len(s["turns"]) for s in sessions] == [len(s.turns) for s in episode.sessions]
    assert sum(len(s["shared"]) for s in sessions) == sum(
        1 for s in episode.sessions for t in s.turns if t.sharing
    )
    assert not any(s["silent"] for s in sessions)  # an empty turn reads <non verbal>
    images = stark_dialogue_user_loader(export_run(run_dir, "stark-hf", tmp_path / "hf"))
    assert images[0]["images"] and all(p.is_file() for p in images[0]["images"])


# ---------------------------------------------------------------- hand-written fixtures


def fixture_hf(tmp_path: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """The hand-written rows as the release's Parquet (session1..6 columns), and images."""
    rows = rows or json.loads((DATA / "stark_hf_rows.json").read_text(encoding="utf-8"))
    fields = [k.split(":", 1)[1] for k in rows[0] if k.startswith("session1:")]
    top = [k for k in rows[0] if not k.startswith("session")]
    names = top + [f"session{n}:{f}" for n in range(1, 7) for f in fields]
    types = [pa.int64() if n == "number_of_session" else pa.string() for n in names]
    schema = pa.schema(list(zip(names, types, strict=True)))
    folder = tmp_path / "stark-dialogue"
    folder.mkdir()
    table = pa.Table.from_pylist([{n: r.get(n, "") for n in names} for r in rows], schema=schema)
    pq.write_table(table, folder / "stark.parquet")
    names = ("faces/a1b2c3d4", "images/e5f6a7b8", "images-url/c9d0e1f2", "images/0a1b2c3d")
    for n, name in enumerate([*names, "images-url/77aa88bb"]):
        write_png(folder / f"{name}.png", (16 + n, 16), (n * 40, 90, 200))
    (tmp_path / "secrets").mkdir()
    write_png(tmp_path / "secrets" / "key.png", (8, 8), (0, 0, 0))
    return folder


def test_hand_written_stark_hf_imported_and_viewed(tmp_path: Path) -> None:
    folder = fixture_hf(tmp_path)
    report = import_stark("stark-hf", folder, tmp_path / "run")
    assert report.imported == ["stark-0-3f1c9a52-7d4e-4b8a-9a51-0c2f6e1d7b10-experience"]
    refused = dict(report.refused)
    assert "absolute path" in refused["stark.parquet row 2"]
    assert "climbs out of the input folder" in refused["stark.parquet row 3"]
    episode = _episode(tmp_path / "run", report.imported[0])
    assert episode.demographics.gender == "female" and episode.narrative.relation == "experience"
    assert [len(s.turns) for s in episode.sessions] == [4, 4]
    new, club, old = (t for s in episode.sessions for t in s.turns if t.sharing)
    assert new.sharing.image_id_from_mobile == "new" and new.sharing.keywords[0] == "cliffs"
    assert old.sharing.image_id_from_mobile == 1  # released id 0 -> ours 1
    requests = {r.id: r for r in episode.image_requests}
    assert requests[club.request_id].image.module == "web_search"  # first ranked key found
    assert requests[new.request_id].image.module == "personalized_t2i"
    assert episode.face.status == "generated" and episode.sessions[1].experience_op == "add"
    assert len(episode.device_images) == 3  # two on the phone, one added in session 1
    result = CliRunner().invoke(app, ["view", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    pages = list((tmp_path / "run" / "view").glob("*.html"))
    text = " ".join(p.read_text(encoding="utf-8") for p in pages)
    assert "Rota Vicentina" in text and "Mariana" in text


def test_hand_written_stark_json_imported(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["import", str(DATA / "stark_0.json"), "-f", "stark-json", "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert "imported 1 episode(s)" in result.output and "refused 1" in result.output
    assert "stark_0.json item 2" in result.output and "not a Python literal" in result.output
    episode = _episode(tmp_path / "r", "stark-0-3f1c9a52-7d4e-4b8a-9a51-0c2f6e1d7b10-experience")
    assert [d.description for d in episode.device_images] == [
        "A selfie on a beach in Sagres",
        "A screenshot of a hiking trail map",
        "A photo of sea cliffs at sunset along a hiking trail",
    ]
    assert (
        episode.sessions[0].time_interval is None and episode.sessions[0].turns[3].utterance == ""
    )
    last = episode.sessions[1].turns[3]
    assert last.sharing.image_id_from_mobile == 2
    assert last.sharing.image_description == "A screenshot of a hiking trail map"
    assert all(r.status == "unaligned" for r in episode.image_requests)
    # our export of the import gives the released element back, field for field, but for
    # two normalizations: the interval's unit in the singular, an album photo's description
    # filled in where the release left it empty
    again = export_run(tmp_path / "r", "stark-json", tmp_path / "again.json")
    original = json.loads((DATA / "stark_0.json").read_text(encoding="utf-8"))[0]
    original["event-sequence"] = original["event-sequence"].replace("'2 months'", "'2 month'")
    original["episode"][1]["session2:dialogue"][3]["sharing_info"]["image_description"] = (
        "A screenshot of a hiking trail map"
    )
    assert json.loads(again.read_text(encoding="utf-8"))[0] == original


def test_load_dataset_reads_stark_hf_with_the_fixture_columns(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    folder = export_run(run_dir, "stark-hf", tmp_path / "ours")
    ours = datasets.load_dataset(
        "parquet", data_files=str(folder / "stark.parquet"), cache_dir=str(tmp_path / "c")
    )["train"]
    theirs = pq.read_schema(fixture_hf(tmp_path) / "stark.parquet")
    assert ours.column_names == theirs.names
    assert ours[0]["number_of_session"] == 3 and ours[0]["session4:speakers"] == ""


def _hf_rows_with(change: dict[str, Any]) -> list[dict[str, Any]]:
    rows = json.loads((DATA / "stark_hf_rows.json").read_text(encoding="utf-8"))[:1]
    rows[0].update(change)
    return rows


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"session1:speakers": json.dumps(["Mariana"] * 100_000)}, "100,000 turns"),
        ({"session2:utterances": json.dumps(["x" * 10_000_000])}, "characters long"),
        ({"number_of_session": 100_000}, "out of range"),
    ],
)
def test_absurd_records_are_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    folder = fixture_hf(tmp_path, _hf_rows_with(change))
    report = import_stark("stark-hf", folder, tmp_path / "run")
    assert report.imported == [] and message in report.refused[0][1]
    assert report.refused[0][0] == "stark.parquet row 1"


def test_the_report_runs_on_an_imported_stark_run(tmp_path: Path) -> None:
    """`mcu report` on released STARK data: its numbers are the fixture's, counted here."""
    result = CliRunner().invoke(
        app, ["import", str(DATA / "stark_0.json"), "-f", "stark-json", "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((DATA / "stark_0.json").read_text(encoding="utf-8"))[0]
    dialogues = [s[f"session{n}:dialogue"] for n, s in enumerate(record["episode"], start=1)]
    shared = [t for d in dialogues for t in d if t["sharing_info"]]
    result = CliRunner().invoke(app, ["report", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    numbers = json.loads((tmp_path / "r" / "report" / "report.json").read_text())["run"]
    assert numbers["dataset"]["episodes"] == 1
    assert numbers["dataset"]["sessions"] == len(dialogues) == 2
    assert numbers["dataset"]["utterances"] == sum(len(d) for d in dialogues)
    assert numbers["dataset"]["images"] == len(shared)
