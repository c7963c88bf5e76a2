"""Payers: what turns a payment batch into money moved. `FilePayer` hands the batch to an operator as a file.

The file is CSV, one line per wallet (amounts as decimal strings, never floats), ending with a sign-off line
carrying the SHA-256 of everything above it; the reference returned is the file name and that checksum.
"""

import csv
import hashlib
import io
import os
from pathlib import Path

from accounting.payouts import PaymentBatch, PaymentFailed

CSV_HEADER = ("batch_id", "wallet", "amount_far", "contribution_ids")


def render_batch_file(batch: PaymentBatch) -> tuple[str, str]:
    """The batch file's text and its checksum (over every line before the sign-off)."""
    body = io.StringIO()
    writer = csv.writer(body, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for payment in batch.payments:
        ids = " ".join(str(i) for i in payment.contribution_ids)
        writer.writerow((batch.id, payment.wallet, format(payment.amount_far, "f"), ids))
    text = body.getvalue()
    checksum = hashlib.sha256(text.encode()).hexdigest()
    return f"{text}# total_far={format(batch.total_far, 'f')} sha256={checksum}\n", checksum


class FilePayer:
    name = "file"

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    async def pay(self, batch: PaymentBatch) -> str:
        text, checksum = render_batch_file(batch)
        path = self.out_dir / f"far-payout-batch-{batch.id}.csv"
        if path.exists():
            raise PaymentFailed(f"{path} already exists: batch ids are unique, so another ledger wrote it")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".csv.partial")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)  # an operator never sees half a batch
        return f"file:{path.name}#sha256={checksum}"
