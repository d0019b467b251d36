"""Settings.from_env: every problem at once, by env var name; check-config masks secrets."""

from __future__ import annotations

import pytest
import redis
from click.testing import CliRunner

from syncworker.bootstrap import Runtime, load_settings
from syncworker.cli import main
from syncworker.config import OPTIONS
from syncworker.devkit.emulators.webhook_receiver import new_secret
from syncworker.errors import ConfigError

SECRET = new_secret()


def test_defaults_carry_documented_values() -> None:
    settings = load_settings({})
    assert settings.soft_bounce_threshold == 3
    assert settings.soft_bounce_window_s == 30 * 86400
    assert settings.signature_tolerance_s == 300
    for name, option in OPTIONS.items():
        if name not in ("sources", "destinations"):
            assert getattr(settings, name) == option.default, name


def test_every_problem_is_listed_at_once() -> None:
    env = {
        "SYNCWORKER_SOURCES": "postmark,nosuchesp",
        "SYNCWORKER_DESTINATIONS": "nosuchdest",
        "SYNCWORKER_SOFT_BOUNCE_THRESHOLD": "three",
        "SYNCWORKER_TYPO": "1",
    }
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    text = "\n".join(info.value.problems)
    assert "SYNCWORKER_POSTMARK_USERNAME is required" in text
    assert "SYNCWORKER_POSTMARK_PASSWORD is required" in text
    assert "unknown ESP 'nosuchesp'" in text
    assert "no module mappings/nosuchdest.py" in text
    assert "SYNCWORKER_SOFT_BOUNCE_THRESHOLD='three'" in text
    assert "SYNCWORKER_TYPO is not a known setting" in text


def test_source_name_maps_to_an_esp_so_two_accounts_can_post() -> None:
    env = {
        "SYNCWORKER_SOURCES": "postmark_eu:postmark,postmark",
        "SYNCWORKER_POSTMARK_EU_USERNAME": "eu",
        "SYNCWORKER_POSTMARK_EU_PASSWORD": "pw-eu",
        "SYNCWORKER_POSTMARK_USERNAME": "us",
        "SYNCWORKER_POSTMARK_PASSWORD": "pw-us",
        "SYNCWORKER_POSTMARK_PASSWORD_PREVIOUS": "pw-old",
    }
    settings = load_settings(env)
    assert {n: s.esp for n, s in settings.sources.items()} == {
        "postmark_eu": "postmark",
        "postmark": "postmark",
    }
    assert settings.sources["postmark"].secrets("PASSWORD") == ["pw-us", "pw-old"]
    assert settings.sources["postmark_eu"].secrets("PASSWORD") == ["pw-eu"]


def test_secret_for_a_source_that_is_not_enabled_is_reported() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"SYNCWORKER_MAILGUN_SIGNING_KEY": "k"})
    assert "SYNCWORKER_MAILGUN_SIGNING_KEY is not a known setting" in str(info.value)


def test_destination_settings_and_overrides_are_read() -> None:
    env = {
        "SYNCWORKER_DESTINATIONS": "hubspot",
        "SYNCWORKER_HUBSPOT_TOKEN": "pat-1",
        "SYNCWORKER_HUBSPOT_RATE": "50/10",
        "SYNCWORKER_HUBSPOT_BASE_URL": "http://127.0.0.1:9",
    }
    settings = load_settings(env)
    dest = settings.destinations["hubspot"]
    assert dest.get("TOKEN") == "pat-1"
    assert dest.get("RATE") == "50/10"


def test_missing_destination_secret_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"SYNCWORKER_DESTINATIONS": "hubspot"})
    assert "SYNCWORKER_HUBSPOT_TOKEN is required" in str(info.value)


def test_check_config_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "REDIS_URL": "redis://user:hunter2@127.0.0.1:1/0",
        "SYNCWORKER_SOURCES": "postmark",
        "SYNCWORKER_POSTMARK_USERNAME": "pmuser",
        "SYNCWORKER_POSTMARK_PASSWORD": "s3cret-value",
        "SYNCWORKER_API_TOKEN": "api-token-value",
    }
    result = CliRunner().invoke(main, ["check-config"], env=env)
    assert result.exit_code == 0, result.output
    assert "configuration OK" in result.output
    assert "SYNCWORKER_POSTMARK_PASSWORD" in result.output
    for secret in ("s3cret-value", "api-token-value", "hunter2"):
        assert secret not in result.output


def test_api_token_previous_is_read_and_masked() -> None:
    env = {
        "SYNCWORKER_API_TOKEN": "new-api-token",
        "SYNCWORKER_API_TOKEN_PREVIOUS": "old-api-token",
    }
    assert load_settings(env).api_token_previous == "old-api-token"
    result = CliRunner().invoke(main, ["check-config"], env=env)
    assert result.exit_code == 0, result.output
    assert "SYNCWORKER_API_TOKEN_PREVIOUS" in result.output
    assert "old-api-token" not in result.output and "new-api-token" not in result.output


def test_api_token_previous_without_a_current_token_is_a_problem() -> None:
    with pytest.raises(ConfigError, match="API_TOKEN_PREVIOUS is set but"):
        load_settings({"SYNCWORKER_API_TOKEN_PREVIOUS": "old-api-token"})


def test_check_config_fails_with_every_problem() -> None:
    result = CliRunner().invoke(main, ["check-config"], env={"SYNCWORKER_BOGUS": "1"})
    assert result.exit_code == 1
    assert "SYNCWORKER_BOGUS is not a known setting" in result.output


def test_check_config_builds_parsers_and_destinations() -> None:
    """A key that cannot be loaded is a startup error, not a 401 on every request."""
    env = {
        "SYNCWORKER_SOURCES": "sendgrid",
        "SYNCWORKER_SENDGRID_PUBLIC_KEY": "bm90IGEga2V5",
        "SYNCWORKER_DESTINATIONS": "hubspot",
        "SYNCWORKER_HUBSPOT_TOKEN": "t",
        "SYNCWORKER_HUBSPOT_RATE": "fast",
        "SYNCWORKER_HUBSPOT_RESUBSCRIBE_SUBSCRIPTION_IDS": "one,two",
    }
    result = CliRunner().invoke(main, ["check-config"], env=env)
    assert result.exit_code == 1
    assert "SYNCWORKER_SENDGRID_PUBLIC_KEY" in result.output
    assert "RESUBSCRIBE_SUBSCRIPTION_IDS" in result.output
    assert "SYNCWORKER_HUBSPOT_RATE='fast'" in result.output


def test_check_config_shows_plain_settings_and_strips_url_credentials() -> None:
    env = {
        "SYNCWORKER_DESTINATIONS": "webhook,segment",
        "SYNCWORKER_WEBHOOK_URL": "https://user:pa55word@hooks.example.com/in",
        "SYNCWORKER_WEBHOOK_SECRET": "whsec_" + "A" * 32,
        "SYNCWORKER_SEGMENT_WRITE_KEY": "wk-secret-value",
    }
    result = CliRunner().invoke(main, ["check-config"], env=env)
    assert result.exit_code == 0, result.output
    assert "pa55word" not in result.output and "wk-secret-value" not in result.output
    assert "https://user:***@hooks.example.com/in" in result.output
    assert "SYNCWORKER_SEGMENT_USER_ID" in result.output and "email" in result.output


def test_check_config_refuses_a_bad_concurrency_or_batch_wait() -> None:
    env = {
        "SYNCWORKER_DESTINATIONS": "hubspot,segment",
        "SYNCWORKER_HUBSPOT_TOKEN": "t",
        "SYNCWORKER_HUBSPOT_CONCURRENCY": "0",
        "SYNCWORKER_SEGMENT_WRITE_KEY": "k",
        "SYNCWORKER_SEGMENT_BATCH_WAIT": "5",
    }
    result = CliRunner().invoke(main, ["check-config"], env=env)
    assert result.exit_code == 1
    assert "SYNCWORKER_HUBSPOT_CONCURRENCY='0'" in result.output
    assert "SYNCWORKER_SEGMENT_BATCH_WAIT='5'" in result.output


def test_further_deliver_jobs_only_in_spare_deliver_processes() -> None:
    """By default (a deliver process per destination) each destination has one slot; extra
    processes give a destination its mapping's concurrency, an explicit setting is kept."""
    base = {"SYNCWORKER_DESTINATIONS": "hubspot,webhook", "SYNCWORKER_HUBSPOT_TOKEN": "t"}
    base |= {"SYNCWORKER_WEBHOOK_URL": "https://h.example/x", "SYNCWORKER_WEBHOOK_SECRET": SECRET}

    def slots(**extra: str) -> dict[str, int]:
        settings = load_settings({**base, **extra})
        rt = Runtime.build(settings, redis.Redis())  # not connected: nothing is sent
        return {name: d.concurrency for name, d in rt.destinations.items()}

    assert slots() == {"hubspot": 1, "webhook": 1}
    assert slots(SYNCWORKER_DELIVER_WORKERS="3") == {"hubspot": 2, "webhook": 1}
    assert slots(SYNCWORKER_DELIVER_WORKERS="9") == {"hubspot": 4, "webhook": 1}
    assert slots(SYNCWORKER_HUBSPOT_CONCURRENCY="3") == {"hubspot": 3, "webhook": 1}


def test_batch_wait_is_one_request_interval_within_bounds() -> None:
    base = {"SYNCWORKER_DESTINATIONS": "hubspot", "SYNCWORKER_HUBSPOT_TOKEN": "t"}

    def wait(**extra: str) -> float:
        settings = load_settings({**base, **extra})
        return Runtime.build(settings, redis.Redis()).destinations["hubspot"].batch_wait_s

    assert wait() == pytest.approx(0.1)  # 100 requests / 10 s
    assert wait(SYNCWORKER_HUBSPOT_RATE="1/60") == 1.0  # capped
    assert wait(SYNCWORKER_HUBSPOT_RATE="1000/1") == pytest.approx(0.1)  # the default floor
    assert wait(SYNCWORKER_BATCH_WAIT="0.3") == pytest.approx(0.3)
    assert wait(SYNCWORKER_HUBSPOT_BATCH_WAIT="0") == 0.0
