from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from minigate.logger.redact import (
    MAX_DEPTH,
    Placeholders,
    RedactionBudget,
    RedactionPolicy,
    Redactor,
    Span,
    find_spans,
    redact_lines,
)
from minigate.logger.redact.numbers import is_valid_iban

DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "presidio_synth" / "synth_dataset_v2.json"
TARGET_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")


def found(text: str) -> list[tuple[str, str]]:
    return [(span.type, text[span.start : span.end]) for span in find_spans(text)]


def assert_finds(entity_type: str, text: str, value: str) -> None:
    assert (entity_type, value) in found(text), found(text)


def assert_none(text: str, entity_type: str | None = None) -> None:
    spans = found(text)
    assert not [s for s in spans if entity_type in (None, s[0])], spans


@pytest.mark.parametrize(
    "text, value",
    [
        ("write to jane.doe+tag@mail.example.co.uk today", "jane.doe+tag@mail.example.co.uk"),
        ("(Bob.Smith@Example.COM)", "Bob.Smith@Example.COM"),
    ],
)
def test_emails(text: str, value: str) -> None:
    assert_finds("EMAIL_ADDRESS", text, value)


@pytest.mark.parametrize("text", ["user@localhost", "a @ b.com", "see @mention.com", "x@y"])
def test_not_emails(text: str) -> None:
    assert_none(text, "EMAIL_ADDRESS")


@pytest.mark.parametrize(
    "text, value",
    [
        ("call +1 415-555-0100 now", "+1 415-555-0100"),
        ("call +44 20 7946 0958", "+44 20 7946 0958"),
        ("mobile +41 (0)96 471 07 95.", "+41 (0)96 471 07 95"),
        ("office (555) 123-4567", "(555) 123-4567"),
        ("555.123.4567", "555.123.4567"),
        ("1-800-555-0199", "1-800-555-0199"),
        ("desk: 555-123-4567x204", "555-123-4567x204"),
        ("Tél 01.23.45.67.89", "01.23.45.67.89"),
        ("ring 0490 75 40 81", "0490 75 40 81"),
        ("my number is 555 1234", "555 1234"),
        ("Fax: 4155550100", "4155550100"),
        ("dial 0044 20 7946 0958", "0044 20 7946 0958"),
        ("desk 555-123-4567 ext. 204", "555-123-4567 ext. 204"),  # the extension reaches past the digits
        ("call ٤١٥-٥٥٥-٠١٣٢ now", "٤١٥-٥٥٥-٠١٣٢"),  # any script's digits are digits
    ],
)
def test_phones(text: str, value: str) -> None:
    assert_finds("PHONE_NUMBER", text, value)


@pytest.mark.parametrize(
    "text",
    [
        "released on 2024-01-15",
        "on 2024-01-15 10:30:00",
        "at 2024-01-15T10:30:00Z",
        "at 1980-04-19T14:17:44.448570",
        "due 15.01.2024 or 01/15/2024",
        "order ORD-2024-118823 shipped",
        "invoice #123-4567-890",
        "it costs $1 299 000",
        "1 234 567 people",
        "12 500 EUR",
        "between 2019 2020 2021",
        "a batch of 4155550100 items",  # a bare digit run needs a phone word nearby
        "ZIP+4 12101-0001, CEP 36926-252",
        "postcode 00597-793",
        "Suite 541 6343 Skogstien",
        "Pi is 3.14159265",
        "prices 12.50 34.99",
        "17151 2450 Crown St",
    ],
)
def test_not_phones(text: str) -> None:
    assert_none(text, "PHONE_NUMBER")


@pytest.mark.parametrize(
    "text, value",
    [
        ("card 4111 1111 1111 1111 exp", "4111 1111 1111 1111"),
        ("card 4111-1111-1111-1111", "4111-1111-1111-1111"),
        ("amex 3782 822463 10005", "3782 822463 10005"),
        ("cc 4007070753690781 on file", "4007070753690781"),
        ("maestro 6759649826438453", "6759649826438453"),
        ("card ٤١١١ ١١١١ ١١١١ ١١١١", "٤١١١ ١١١١ ١١١١ ١١١١"),
    ],
)
def test_credit_cards(text: str, value: str) -> None:
    assert_finds("CREDIT_CARD", text, value)


@pytest.mark.parametrize("text", ["card 4111 1111 1111 1112", "card 4007070753690782", "0000 0000 0000 0000"])
def test_invalid_luhn_is_not_a_card(text: str) -> None:
    assert_none(text)


@pytest.mark.parametrize(
    "text, value",
    [
        ("IBAN GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32"),
        ("to DE89370400440532013000", "DE89370400440532013000"),
        ("my iban is gb82west12345698765432", "gb82west12345698765432"),
    ],
)
def test_ibans(text: str, value: str) -> None:
    assert_finds("IBAN_CODE", text, value)


@pytest.mark.parametrize(
    "text",
    ["GB82WEST12345698765433", "XX82WEST12345698765432", "GB82WEST123456987654"],  # checksum, country, length
)
def test_invalid_iban_is_not_redacted(text: str) -> None:
    assert_none(text)


def test_iban_check_reads_any_scripts_digits() -> None:
    iban = "GB82 WEST 1234 5698 7654 32"
    arabic_indic = iban.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
    assert is_valid_iban(arabic_indic) and not is_valid_iban(arabic_indic.replace("٣٢", "٣٣"))


@pytest.mark.parametrize(
    "text, value",
    [("SSN: 536-22-8718", "536-22-8718"), ("ssn 536 22 8718", "536 22 8718"), ("ssn 536.22.8718", "536.22.8718")],
)
def test_ssns(text: str, value: str) -> None:
    assert_finds("US_SSN", text, value)


@pytest.mark.parametrize(
    "text",
    ["000-12-3456", "666-12-3456", "912-34-5678", "536-00-8718", "536-22-0000", "123-45-6789", "536-22 8718", "536228718"],
)
def test_invalid_ssns(text: str) -> None:
    assert_none(text, "US_SSN")


@pytest.mark.parametrize(
    "text, value",
    [
        ("from 192.168.1.10:8080", "192.168.1.10"),
        ("ip 1.2.3.4 ok", "1.2.3.4"),
        ("client_ip = |106.31.73.20|", "106.31.73.20"),
        ("v6 2001:db8::8a2e:370:7334 ok", "2001:db8::8a2e:370:7334"),
        ("[fe80::1]", "fe80::1"),
        ("mapped ::ffff:192.168.0.1", "::ffff:192.168.0.1"),
    ],
)
def test_ip_addresses(text: str, value: str) -> None:
    assert_finds("IP_ADDRESS", text, value)


@pytest.mark.parametrize("text", ["999.1.1.1", "1.2.3", "v1.2.3.4", "at 12:34:56", "a[1::2]", "std::vector", "00:1A:2B:3C:4D:5E"])
def test_not_ip_addresses(text: str) -> None:
    assert_none(text, "IP_ADDRESS")


JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx4\nq8Zr==\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    "text, value",
    [
        ("key sk-proj-abcDEF1234567890ghijKLMNOP", "sk-proj-abcDEF1234567890ghijKLMNOP"),
        ("OPENAI_API_KEY=sk-4fG7hJ2kL9mN3pQ8rS1tU6vW", "sk-4fG7hJ2kL9mN3pQ8rS1tU6vW"),
        ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
        ("gh ghp_16C7e42F292c6912E7710c838347Ae178B4a", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
        ("gh github_pat_11ABCDEFG0123456789_abcdefghij", "github_pat_11ABCDEFG0123456789_abcdefghij"),
        ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890-abcdefghij"),
        ("g AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
        (f"jwt {JWT} end", JWT),
        (f"key:\n{PEM}\nthanks", PEM),
        ("Authorization: Bearer abcdef1234567890ABCDEF", "abcdef1234567890ABCDEF"),
        ('{"password": "Summer2024!"}', "Summer2024!"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("the token is q8Zr3LmN0pXw7TbY2KcV9hJd ok", "q8Zr3LmN0pXw7TbY2KcV9hJd"),  # entropy alone
    ],
)
def test_secrets(text: str, value: str) -> None:
    assert_finds("SECRET", text, value)


@pytest.mark.parametrize(
    "text",
    [
        "commit 7622dec1e5f7d25dc60b57c28c39f4c4af197018",  # hex: commit ids and digests are not secrets
        "request 550e8400-e29b-41d4-a716-446655440000",
        '"tool_call_id": "call_2mLq0b3QxZ7pN9rT5vW8yK1s"',  # tool-call ids keep a dataset's structure
        "class TestRedactJsonWalksToolCalls3 and getUserAccountSettings2024",
        "model meta-llama/Llama-3.1-8B-Instruct on x86_64-unknown-linux-gnu",
        "api_key = os.environ['OPENAI_API_KEY']; password: Optional[str] = None",
        "auth = b64encode2(raw)",
        "sk-learn-is-a-library-not-a-key",
        "key: sk-test-agent",
    ],
)
def test_not_secrets(text: str) -> None:
    assert_none(text, "SECRET")


@pytest.mark.parametrize(
    "text, value",
    [
        ("Please forward this to Jennifer Hill before Friday.", "Jennifer Hill"),
        ("Ask Dr. Okafor about the results.", "Okafor"),
        ("Hi Zuzana, thanks for the update.", "Zuzana"),
        ("My name is Krisztián Szöllösy and I need help.", "Krisztián Szöllösy"),
        ("Zuzana: Who are you?", "Zuzana"),
        ("The report was written by Mohmad R. Vizirov last year.", "Mohmad R. Vizirov"),
        ("I met Willemine ten Pas at the conference.", "Willemine ten Pas"),
        ("Mr. O'Brien and Mrs. Smith-Jones signed it.", "O'Brien"),
        ("Mr. O'Brien and Mrs. Smith-Jones signed it.", "Smith-Jones"),
        ("They had three kids: Kateřina, James and Emily.", "Kateřina"),
        ("my name is lena andersson", "lena andersson"),
        ("Andrew had given the keys to his sister.", "Andrew"),
    ],
)
def test_person_names(text: str, value: str) -> None:
    assert_finds("PERSON", text, value)


@pytest.mark.parametrize(
    "text",
    [
        "See you on Monday in March.",
        "Apple and Microsoft released new versions of Python and Docker.",
        "The meeting is at noon. Will you come? May I join? Hope so.",
        "We moved here from Kenosha last year and flew to Neupré.",
        "Russell Investments and Morgan Stanley Group reported earnings.",
        "Note: Summary of the Results",
        "User: What is the capital of France?\nAssistant: Paris.",
        "Claude: Sure, here is the Jenkins pipeline in Ruby.",
        "The White House is on Pennsylvania Avenue.",
        "iPhone users on GitHub like JavaScript.",
    ],
)
def test_not_person_names(text: str) -> None:
    assert_none(text, "PERSON")


@pytest.mark.parametrize(
    "text, value",
    [
        ("Ship to 24 Clarke Avenue, Apt. 5, Springfield, IL 62704.", "24 Clarke Avenue, Apt. 5, Springfield, IL 62704"),
        ("The bus station is on Villacher Strasse 89", "Villacher Strasse 89"),
        ("Meet me at PSC 1437, Box 3833\nAPO AA 66791", "PSC 1437, Box 3833\nAPO AA 66791"),
        ("28030 Edeby 55\n Apt. 297\n TYSTBERGA\n Sweden 99178",) * 2,
        ("She lives on Via Tasso 129.", "Via Tasso 129"),
        ("Send it to ul. Słowicza 10 Apt. 360", "ul. Słowicza 10 Apt. 360"),
        ("Our office: Pohlstrasse 9, 10785 Berlin", "Pohlstrasse 9, 10785 Berlin"),
        ("The letter went to P.O. Box 242.", "P.O. Box 242"),
        ("Billing: 1668 Glyn St", "1668 Glyn St"),
        ("corner of 3744 Retreat Avenue and Władysława Route.", "corner of 3744 Retreat Avenue and Władysława Route"),
    ],
)
def test_street_addresses(text: str, value: str) -> None:
    assert_finds("STREET_ADDRESS", text, value)


@pytest.mark.parametrize(
    "text",
    [
        "Python 3 runs on Windows 10; see Chapter 11, Section 2.",
        "During 1971, Mayo-Walters invested heavily.",
        "I have 3 Apples and 2 oranges.",
        "Version 2 Release 3 shipped on 2024-01-15.",
        "Call Suite 500 support at 555-123-4567",
    ],
)
def test_not_street_addresses(text: str) -> None:
    assert_none(text, "STREET_ADDRESS")


def test_an_address_keeps_a_phone_number_out_of_it() -> None:
    text = "Lara Pottinger\n\n3247 Rua Igreja 25\n Apt. 236\n Ribeirão\n Portugal 30971\n0490 75 40 81"
    assert ("STREET_ADDRESS", "3247 Rua Igreja 25\n Apt. 236\n Ribeirão\n Portugal 30971") in found(text)
    assert ("PHONE_NUMBER", "0490 75 40 81") in found(text)


def test_names_and_addresses_get_placeholders() -> None:
    text, spans = Redactor().redact("Dear Jennifer Hill, your card ships to 24 Clarke Avenue. Thanks, Jennifer  Hill")
    assert text == "Dear <PERSON_1>, your card ships to <STREET_ADDRESS_1>. Thanks, <PERSON_1>"
    assert [s.type for s in spans] == ["PERSON", "STREET_ADDRESS", "PERSON"]


def test_names_follow_the_policy() -> None:
    redactor = Redactor(RedactionPolicy({"PERSON": "keep", "STREET_ADDRESS": "redact"}))
    assert redactor.redact("Dr. Okafor lives at 24 Clarke Avenue")[0] == "Dr. Okafor lives at <STREET_ADDRESS_1>"


def test_spans_are_sorted_non_overlapping_and_index_the_original() -> None:
    text = "Ann <ann@example.com> paid with 4111 1111 1111 1111 from 10.0.0.7, call +1 415-555-0100 or ann@example.com"
    spans = find_spans(text)
    kinds = ["PERSON", "EMAIL_ADDRESS", "CREDIT_CARD", "IP_ADDRESS", "PHONE_NUMBER", "EMAIL_ADDRESS"]
    assert [s.type for s in spans] == kinds
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))
    redacted, replaced = Redactor().redact(text)
    assert replaced == spans
    assert [text[s.start : s.end] for s in replaced][:3] == ["Ann", "ann@example.com", "4111 1111 1111 1111"]
    assert redacted == "<PERSON_1> <<EMAIL_1>> paid with <CREDIT_CARD_1> from <IP_1>, call <PHONE_1> or <EMAIL_1>"


def test_a_credential_wins_over_what_it_contains() -> None:
    assert found("password=5362287180") == [("SECRET", "5362287180")]


def test_numbering_is_per_type_and_per_value_within_one_state() -> None:
    redactor, state = Redactor(), Placeholders()
    first, _ = redactor.redact("a@x.io, b@x.io, 10.0.0.1", state)
    second, _ = redactor.redact("A@X.IO wrote from 10.0.0.2; +1 (415) 555-0100 = +1 415 555 0100", state)
    assert first == "<EMAIL_1>, <EMAIL_2>, <IP_1>"
    assert second == "<EMAIL_1> wrote from <IP_2>; <PHONE_1> = <PHONE_1>"
    assert redactor.redact("b@x.io")[0] == "<EMAIL_1>"  # a fresh record starts again


def test_hash_policy_is_keyed_and_stable() -> None:
    policy = RedactionPolicy({"EMAIL_ADDRESS": "hash"}, hash_key=b"pepper")
    one, _ = Redactor(policy).redact("a@x.io and A@x.io; 10.0.0.1")
    again, _ = Redactor(policy).redact("a@x.io")
    other_key, _ = Redactor(RedactionPolicy({"EMAIL_ADDRESS": "hash"}, hash_key=b"salt")).redact("a@x.io")
    assert re.fullmatch(r"<EMAIL_([0-9a-f]{12})> and <EMAIL_\1>; <IP_1>", one)
    assert again == one.split(" and ")[0]
    assert other_key != again


def test_keep_policy_leaves_the_type_alone() -> None:
    redactor = Redactor(RedactionPolicy({"IP_ADDRESS": "keep"}))
    text, spans = redactor.redact("from 10.0.0.1 by a@x.io")
    assert text == "from 10.0.0.1 by <EMAIL_1>"
    assert [s.type for s in spans] == ["EMAIL_ADDRESS"]


@pytest.mark.parametrize(
    "actions, key",
    [({"EMAIL": "redact"}, None), ({"EMAIL_ADDRESS": "drop"}, None), ({"EMAIL_ADDRESS": "hash"}, None)],
)
def test_policy_rejects_mistakes(actions: dict[str, Any], key: bytes | None) -> None:
    with pytest.raises(ValueError):
        RedactionPolicy(actions, hash_key=key)


def test_redact_json_walks_a_chat_request() -> None:
    arguments = json.dumps({"to": "ann@example.com", "note": "Phone:\n0490 75 40 81", "n": 3})
    request: dict[str, Any] = {
        "model": "gpt-4.1",
        "temperature": 0.2,
        "messages": [
            {"role": "user", "content": "Mail ann@example.com from 10.0.0.7"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_2mLq0b3QxZ7pN9rT5vW8yK1s", "type": "function",
                                "function": {"name": "send_mail", "arguments": arguments}}],
            },  # fmt: skip
            {"role": "tool", "content": [{"type": "text", "text": "sent to ann@example.com"}]},
        ],
        "metadata": {"bob@example.com": True},
    }
    original = json.loads(json.dumps(request))
    out = Redactor().redact_json(request)
    assert request == original  # a copy, not an edit
    assert out["messages"][0]["content"] == "Mail <EMAIL_1> from <IP_1>"
    call = out["messages"][1]["tool_calls"][0]
    assert call["id"] == "call_2mLq0b3QxZ7pN9rT5vW8yK1s"
    assert json.loads(call["function"]["arguments"]) == {"to": "<EMAIL_1>", "note": "Phone:\n<PHONE_1>", "n": 3}
    assert out["messages"][2]["content"][0]["text"] == "sent to <EMAIL_1>"
    assert out["metadata"] == {"<EMAIL_2>": True}
    assert (out["model"], out["temperature"], out["messages"][1]["content"]) == ("gpt-4.1", 0.2, None)


def test_redact_json_shares_state_and_leaves_clean_json_strings_untouched() -> None:
    state, redactor = Placeholders(), Redactor()
    assert redactor.redact_json({"a": "x@y.io"}, state) == {"a": "<EMAIL_1>"}
    assert redactor.redact_json(['{"b": "x@y.io"}', "{not json x@y.io}"], state) == ['{"b": "<EMAIL_1>"}', "{not json <EMAIL_1>}"]
    clean = '{ "city":  "Paris" }'
    assert redactor.redact_json(clean) is clean


def test_redact_json_walks_any_depth_in_document_order() -> None:
    deep: Any = "c@y.io"
    for _ in range(5000):  # far past Python's recursion limit
        deep = [deep]
    value = {"a@y.io": ["b@y.io", {"k": deep}], "z": '{"q": "d@y.io"}'}
    out = Redactor().redact_json(value)
    assert list(out) == ["<EMAIL_1>", "z"] and out["<EMAIL_1>"][0] == "<EMAIL_2>"
    assert f'"<NESTED DEEPER THAN {MAX_DEPTH} LEVELS: 6 bytes withheld>"' in json.dumps(out)  # c@y.io, cut
    assert out["z"] == '{"q": "<EMAIL_3>"}'  # numbered after what came before it


def test_redaction_budget_withholds_the_rest_never_keeps_it() -> None:
    ticks = iter(range(100))
    budget = RedactionBudget(4.0, clock=lambda: float(next(ticks)))  # one tick a check: spent at the dict
    out = Redactor().redact_json(["a@y.io", "b@y.io", {"c@y.io": "d@y.io"}, "e@y.io"], budget=budget)
    assert out == ["<EMAIL_1>", "<EMAIL_2>", "<REDACTION BUDGET EXCEEDED: 12 bytes withheld>",
                   "<REDACTION BUDGET EXCEEDED: 6 bytes withheld>"]
    assert budget.withheld_bytes == 18


def test_a_long_string_is_redacted_in_pieces_and_cut_at_the_budget() -> None:
    text = ("mail a@y.io\n" + "x" * 20_000 + "\n") * 10  # 200 KB: pieces of 64 KiB, one before the cut
    ticks = iter(range(100))
    out = Redactor().redact_json(text, budget=RedactionBudget(3.0, clock=lambda: float(next(ticks))))
    redacted, withheld = out.split("<REDACTION BUDGET EXCEEDED: ")
    assert redacted.count("<EMAIL_1>") == redacted.count("mail ") > 0 and "a@y.io" not in redacted
    assert withheld == f"{len(text) - len(redacted.replace('<EMAIL_1>', 'a@y.io'))} bytes withheld>"


def test_an_email_after_adversarial_text_is_found() -> None:
    text = "a@" * 50_000 + "jane@example.com"
    assert [(s.start, s.type) for s in find_spans(text)] == [(100_000, "EMAIL_ADDRESS")]


def test_redact_lines_reads_jsonl_and_plain_text() -> None:
    lines = ['{"id": "r1", "text": "ann@example.com twice ann@example.com"}\n', "\n", "plain 10.0.0.1\n", '{"text": "x"}']
    records = list(redact_lines(lines, Redactor()))
    assert records == [
        {"id": "r1", "text": "<EMAIL_1> twice <EMAIL_1>",
         "spans": [{"start": 0, "end": 15, "type": "EMAIL_ADDRESS"}, {"start": 22, "end": 37, "type": "EMAIL_ADDRESS"}]},
        {"id": 2, "text": "plain <IP_1>", "spans": [{"start": 6, "end": 14, "type": "IP_ADDRESS"}]},
        {"id": 3, "text": "x", "spans": []},
    ]  # fmt: skip


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "minigate.cli", "redact", *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_cli_on_jsonl_stdin() -> None:
    text = "SSN 536-22-8718, card 4111 1111 1111 1111"
    done = run_cli(stdin=json.dumps({"id": "a", "text": text}) + "\n" + json.dumps({"id": 7, "text": "nothing"}) + "\n")
    assert done.returncode == 0, done.stderr
    first, second = [json.loads(line) for line in done.stdout.splitlines()]
    assert first["id"] == "a" and first["text"] == "SSN <SSN_1>, card <CREDIT_CARD_1>"
    assert [text[s["start"] : s["end"]] for s in first["spans"]] == ["536-22-8718", "4111 1111 1111 1111"]
    assert second == {"id": 7, "text": "nothing", "spans": []}
    assert done.stderr == ""


def test_cli_on_plain_text_files(tmp_path: Path) -> None:
    source, target = tmp_path / "in.txt", tmp_path / "out.jsonl"
    source.write_text("mail ann@example.com\n\nip 10.0.0.1\n", encoding="utf-8")
    done = run_cli("--input", str(source), "--output", str(target))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""  # no progress bar when stderr is not a terminal
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["text"]) for r in records] == [(0, "mail <EMAIL_1>"), (2, "ip <IP_1>")]


@pytest.mark.parametrize("text", ["1 " * 20000, "+1" + "2" * 20000, "a" * 200000, "1." * 20000, ":" * 20000 + "a", "x@" * 20000])
def test_adversarial_input_stays_linear(text: str) -> None:
    started = time.perf_counter()
    find_spans(text)
    assert time.perf_counter() - started < 1.0


def test_span_is_a_small_value() -> None:
    assert Span(1, 2, "US_SSN") == Span(1, 2, "US_SSN") and not hasattr(Span(1, 2, "X"), "__dict__")


def score(records: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """(precision, recall) per type; a predicted span matches a gold span of the same type that it overlaps."""
    gold_hit, gold_all, pred_hit, pred_all = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    for record in records:
        gold = [(g["start_position"], g["end_position"], g["entity_type"]) for g in record["spans"]]
        pred = find_spans(record["full_text"])
        for start, end, kind in gold:
            gold_all[kind] += 1
            gold_hit[kind] += any(p.type == kind and p.start < end and start < p.end for p in pred)
        for p in pred:
            pred_all[p.type] += 1
            pred_hit[p.type] += any(kind == p.type and p.start < end and start < p.end for start, end, kind in gold)
    return {t: (pred_hit[t] / max(pred_all[t], 1), gold_hit[t] / max(gold_all[t], 1)) for t in TARGET_TYPES}


@pytest.mark.skipif(not DATASET.exists(), reason=f"the Presidio synthetic dataset is not at {DATASET}")
def test_presidio_synthetic_dataset_precision_and_recall() -> None:
    records = json.loads(DATASET.read_text(encoding="utf-8"))
    labels = {g["entity_type"] for r in records for g in r["spans"]}
    assert set(TARGET_TYPES) <= labels  # the dataset uses Presidio's names: no mapping needed
    scores = score(records)
    misses = {t: s for t, s in scores.items() if s[0] < 0.95 or s[1] < 0.98}
    assert not misses, misses
