"""Pins the catalogs, locale negotiation, acknowledgement texts and SMS segment counting."""

from __future__ import annotations

from pathlib import Path
from string import Formatter

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

import intake.i18n as i18n
from intake.acknowledgement import Acknowledgement, compose, gsm7_segments
from intake.i18n import (
    DEFAULT_LOCALE,
    SUPPORTED,
    language_name,
    negotiate,
    text_direction,
    translations,
)

REFERENCE = "C-7K3M-9QXA"
LRI, PDI = "\u2066", "\u2069"
LOCALE_DIR = Path(i18n.__file__).resolve().parent / "locale"
LONG_ORGANISATION = "Miejskie Przedsiębiorstwo Wodociągów i Kanalizacji w Krakowie Spółka Akcyjna"


def _catalog(locale: str) -> Catalog:
    with (LOCALE_DIR / locale / "LC_MESSAGES" / "intake.po").open("rb") as fp:
        return read_po(fp, locale=locale)


def _template() -> Catalog:
    with (LOCALE_DIR / "intake.pot").open("rb") as fp:
        return read_po(fp)


def _placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in Formatter().parse(text) if field is not None}


def _ids(catalog: Catalog) -> set[object]:
    return {message.id for message in catalog if message.id}


# --- catalogs -----------------------------------------------------------------


def test_supported_locales() -> None:
    assert {"en", "fa", "zh", "pl", "ar", "de", "es", "fr"} <= set(SUPPORTED)
    assert DEFAULT_LOCALE == "en"
    assert DEFAULT_LOCALE in SUPPORTED


def test_template_covers_every_message_in_the_code() -> None:
    # A msgid changed in code but not re-extracted would silently fall back to English.
    in_code: set[object] = set()
    for path in sorted((LOCALE_DIR.parent).glob("*.py")):
        for _, message, _, _ in extract_from_file("python", path):
            in_code.add(message)
    assert in_code, "no messages extracted: markers changed?"
    assert in_code <= _ids(_template())


@pytest.mark.parametrize("locale", SUPPORTED)
def test_catalog_matches_template(locale: str) -> None:
    assert _ids(_catalog(locale)) == _ids(_template())


@pytest.mark.parametrize("locale", SUPPORTED)
def test_catalog_fully_translated(locale: str) -> None:
    catalog = _catalog(locale)
    assert catalog.locale is not None and str(catalog.locale) == locale
    for message in catalog:
        if not message.id:
            continue
        assert not message.fuzzy, (locale, message.id)
        plural = isinstance(message.id, tuple)
        strings = message.string if plural else (message.string,)
        if plural:
            assert len(strings) == catalog.num_plurals, (locale, message.id)
        source = message.id if plural else (message.id,)
        expected = set().union(*(_placeholders(text) for text in source))
        if expected:
            assert "python-brace-format" in message.flags, (locale, message.id)
        # Arabic spells out one and two ("يوم عمل واحد", "يومَي عمل"), so a plural
        # form may leave out {days}; nothing else may go missing or be invented.
        required = expected - {"days"} if plural else expected
        for text in strings:
            assert text and text.strip(), (locale, message.id)
            found = _placeholders(text)
            assert required <= found <= expected, (locale, message.id, text)
        if plural and "days" in expected:
            assert "days" in _placeholders(strings[-1]), (locale, message.id)


def test_translations_compiled_in_memory_and_cached() -> None:
    assert translations("pl") is translations("pl-PL")
    assert translations("de").gettext("Thank you for contacting us.") != "Thank you for contacting us."
    assert not list(LOCALE_DIR.rglob("*.mo"))


def test_unknown_locale_translates_to_english() -> None:
    for locale in ("xx", "", None, "tlh-Piqd"):
        assert translations(locale).gettext("Thank you for contacting us.") == "Thank you for contacting us."


# --- negotiation --------------------------------------------------------------


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        ("pl", "pl"),
        ("pl-PL", "pl"),
        ("pl_PL", "pl"),
        ("pl_PL.UTF-8", "pl"),
        ("PL", "pl"),
        ("FA", "fa"),
        ("fa-IR", "fa"),
        ("zh-Hans-CN", "zh"),
        ("zh-TW", "zh"),
        ("zh-Hant", "zh"),
        ("ar-EG", "ar"),
        ("de-AT", "de"),
        ("es-419", "es"),
        ("fr-CA", "fr"),
        ("en-GB", "en"),
        ("fa-IR,fa;q=0.9,en;q=0.5", "fa"),
        ("en;q=0.5, fa-IR;q=0.9", "fa"),
        ("da, pl;q=0.8, en;q=0.7", "pl"),
        ("pl;q=0, de;q=0.3", "de"),
        ("  de-DE ; q=0.8 ,  xx", "de"),
        ("*", "en"),
        ("xx, *;q=0.1", "en"),
        ("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5", "fr"),
        (["xx", "pl-PL", "fa"], "pl"),
        (("zh-CN", "en"), "zh"),
        (iter(["ar", "de"]), "ar"),
        (b"fa-IR,fa;q=0.9", "fa"),
    ],
)
def test_negotiate(preferred: object, expected: str) -> None:
    assert negotiate(preferred) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        "   ",
        ",,,;;;",
        "q=0.5",
        "en;q=abc",  # still names en
        ";q=1",
        "x",
        "1234",
        "-pl",
        "!!!",
        "\x00\xff",
        "a" * 10_000,
        "xx-YY",
        ["", None, 42],
        42,
        object(),
        "*;q=0",
    ],
)
def test_negotiate_never_raises(garbage: object) -> None:
    assert negotiate(garbage) in SUPPORTED  # type: ignore[arg-type]
    assert negotiate(garbage, default="de") in SUPPORTED  # type: ignore[arg-type]


def test_negotiate_falls_back_to_given_default() -> None:
    assert negotiate("xx", default="fa") == "fa"
    assert negotiate(None, default="pl") == "pl"
    assert negotiate("*", default="zh") == "zh"
    assert negotiate("en;q=0, *", default="en") != "en"


def test_direction_and_language_names() -> None:
    assert text_direction("fa") == "rtl"
    assert text_direction("ar-EG") == "rtl"
    assert text_direction("pl") == "ltr"
    assert text_direction("zh") == "ltr"
    assert text_direction("garbage!") == "ltr"
    assert language_name("fa") == "فارسی"
    assert language_name("pl") == "polski"
    assert language_name("zh") == "中文"
    assert language_name("ar") == "العربية"
    assert all(language_name(locale) for locale in SUPPORTED)


# --- compose ------------------------------------------------------------------


def test_persian_is_rtl_with_isolated_reference() -> None:
    ack = compose(REFERENCE, "fa-IR,fa;q=0.9,en;q=0.5", response_days=10)
    assert isinstance(ack, Acknowledgement)
    assert ack.locale == "fa"
    assert ack.direction == "rtl"
    isolated = f"{LRI}{REFERENCE}{PDI}"
    assert isolated in ack.subject
    assert isolated in ack.text
    assert isolated in ack.short
    assert "۱۰" in ack.text  # Persian digits for the number of days
    assert "شکایت" in ack.text


def test_ltr_locales_have_no_isolates() -> None:
    for locale in ("en", "pl", "zh", "de"):
        ack = compose(REFERENCE, locale)
        assert ack.direction == "ltr"
        assert LRI not in ack.subject + ack.text + ack.short


@pytest.mark.parametrize(
    ("days", "phrase"),
    [(1, "1 dzień roboczy"), (3, "3 dni robocze"), (5, "5 dni roboczych"), (22, "22 dni robocze")],
)
def test_polish_plural_forms(days: int, phrase: str) -> None:
    ack = compose(REFERENCE, "pl-PL", response_days=days)
    assert phrase in ack.text
    assert phrase in ack.short


@pytest.mark.parametrize(
    ("days", "phrase"),
    [(1, "يوم عمل واحد"), (2, "يومَي عمل"), (3, "3 أيام عمل"), (11, "11 يوم عمل"), (100, "100 يوم عمل")],
)
def test_arabic_plural_forms(days: int, phrase: str) -> None:
    assert phrase in compose(REFERENCE, "ar", response_days=days).text


def test_english_singular_and_plural() -> None:
    assert "within 1 working day." in compose(REFERENCE, "en", response_days=1).text
    assert "within 5 working days." in compose(REFERENCE, "en").text


@pytest.mark.parametrize("locale", SUPPORTED)
@pytest.mark.parametrize("follow_up", [False, True])
def test_reference_verbatim_everywhere(locale: str, follow_up: bool) -> None:
    ack = compose(REFERENCE, locale, organisation="ACME", follow_up=follow_up)
    assert ack.locale == locale
    assert ack.direction == text_direction(locale)
    for field in (ack.subject, ack.text, ack.short):
        assert REFERENCE in field
        assert "{" not in field and "}" not in field  # every placeholder filled
    shown = f"{LRI}{REFERENCE}{PDI}" if ack.direction == "rtl" else REFERENCE
    assert f"[{shown}]" in ack.subject  # brackets kept: the subject is where replies are matched


@pytest.mark.parametrize("locale", SUPPORTED)
@pytest.mark.parametrize("follow_up", [False, True])
def test_short_fits_two_sms_segments(locale: str, follow_up: bool) -> None:
    # The organisation is long on purpose: it must never reach the short text.
    for days in (1, 2, 3, 5, 10, 11, 22, 100, 101, 999):
        ack = compose(REFERENCE, locale, response_days=days, organisation=LONG_ORGANISATION, follow_up=follow_up)
        assert LONG_ORGANISATION not in ack.short
        assert gsm7_segments(ack.short) <= 2, (locale, days, len(ack.short), ack.short)


def test_organisation_mentioned_in_text_only_when_given() -> None:
    with_org = compose(REFERENCE, "en", organisation="ACME Water")
    assert with_org.text.startswith("Thank you for contacting ACME Water.")
    neutral = compose(REFERENCE, "en")
    assert neutral.text.startswith("Thank you for contacting us.")
    persian = compose(REFERENCE, "fa", organisation="ACME Water")
    assert "\u2068ACME Water\u2069" in persian.text


def test_follow_up_wording() -> None:
    ack = compose(REFERENCE, "en", follow_up=True)
    assert ack.subject == f"We have added your message to complaint [{REFERENCE}]"
    assert f"We have added your message to complaint {REFERENCE}." in ack.text
    assert ack.short.startswith(f"We have added your message to complaint {REFERENCE}.")
    new = compose(REFERENCE, "en")
    assert new.subject == f"We have received your complaint [{REFERENCE}]"
    assert "replying to this message is enough" in new.text


def test_unknown_locale_gives_english() -> None:
    ack = compose(REFERENCE, "xx-YY")
    assert (ack.locale, ack.direction) == ("en", "ltr")
    assert compose(REFERENCE, None).locale == "en"


def test_compose_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        compose("  ", "en")
    with pytest.raises(ValueError):
        compose(REFERENCE, "en", response_days=0)


# --- SMS segments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" + "a" * 158, 1),  # € is an escape pair: 2 + 158 = 160
        ("€" + "a" * 159, 2),
        ("[" * 80, 1),
        ("ą" * 70, 1),
        ("ą" * 71, 2),
        ("ą" + "a" * 69, 1),  # one non-GSM character makes the whole text UCS-2
        ("ą" + "a" * 70, 2),
        ("ą" * 134, 2),
        ("ą" * 135, 3),
        ("ÄÖÑÜäöñüàèéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¡¿§£¥¤@$", 1),
        ("😀" * 35, 1),  # astral characters take two UTF-16 units
        ("😀" * 36, 2),
    ],
)
def test_gsm7_segments(text: str, segments: int) -> None:
    assert gsm7_segments(text) == segments


def test_gsm7_escape_pair_is_not_split_across_segments() -> None:
    # 152 septets then "€" (2): the pair cannot straddle the 153-septet boundary.
    assert gsm7_segments("a" * 152 + "€" + "a" * 152) == 3
    assert gsm7_segments("a" * 151 + "€" + "a" * 153) == 2


# --- the channel decides whether a reply reaches us ------------------------------------------


@pytest.mark.parametrize("locale", sorted(SUPPORTED))
def test_only_a_replyable_channel_is_told_that_replying_is_enough(locale):
    replyable = compose("C-7K3M-9QXA", locale, replyable=True)
    not_replyable = compose("C-7K3M-9QXA", locale, replyable=False)
    assert replyable.text != not_replyable.text
    assert "C-7K3M-9QXA" in not_replyable.text.split("\n\n")[-1]
    if locale != "en":  # translated, not fallen back to English
        assert "whenever you contact us" not in not_replyable.text
    assert replyable.short == not_replyable.short  # the short text never invites a reply


async def test_a_partner_screen_is_not_told_to_reply_to_it(tmp_path, kafka, topic):
    import aiohttp

    from tests.support.gateway import complaint_body, post_complaint, running, settings

    async with running(settings(tmp_path, kafka.bootstrap, topic)) as (_, base), aiohttp.ClientSession() as http:
        status, answer = await post_complaint(http, base, complaint_body(), "not-replyable")
    assert status == 202
    text = answer["acknowledgement"]["text"]  # in Polish, the complainant's locale
    assert answer["reference"] in text and "Wystarczy odpowiedzieć" not in text
