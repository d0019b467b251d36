"""ESP slug -> parser class. A new ESP module is added here and to the README's ESP table."""

from __future__ import annotations

from syncworker.intake.base import EspParser
from syncworker.intake.esps.mailgun import MailgunParser
from syncworker.intake.esps.mailjet import MailjetParser
from syncworker.intake.esps.postmark import PostmarkParser
from syncworker.intake.esps.sendgrid import SendGridParser

ESP_PARSERS: dict[str, type[EspParser]] = {
    parser.esp: parser for parser in (MailgunParser, MailjetParser, PostmarkParser, SendGridParser)
}
