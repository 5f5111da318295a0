"""An aiosmtpd handler that writes each message it accepts to a folder, one file per message.

    python -m aiosmtpd -n -l 127.0.0.1:PORT -c maildir_handler.Maildir FOLDER [DELAY_MS]

Each file is `<arrival ns>-<random>.eml`: an `X-Rcpt-To:` line with the envelope recipients,
then the message as received. A file appears whole (written, then renamed). DELAY_MS makes the
server take that long over each message (to build a backlog in tests).
"""
import asyncio
import os
import time
import uuid


class Maildir:
    def __init__(self, folder, delay_ms="0"):
        self.folder = folder
        self.delay = int(delay_ms) / 1000.0
        os.makedirs(folder, exist_ok=True)

    @classmethod
    def from_cli(cls, parser, *args):
        if not args:
            parser.error("Maildir needs a folder")
        return cls(*args)

    async def handle_DATA(self, server, session, envelope):
        if self.delay:
            await asyncio.sleep(self.delay)
        name = f"{time.time_ns()}-{uuid.uuid4().hex}"
        tmp = os.path.join(self.folder, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"X-Rcpt-To: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(self.folder, name + ".eml"))
        return "250 Message accepted for delivery"
