"""Schema v10, frozen: the webhook tables (`storage.webhooks`) as they were created.

Kept out of `migrations.py` (one module per step's tables once that file grew long).
"""

from __future__ import annotations

import peewee


def webhook_tables_v10(database: peewee.Database) -> list[type[peewee.Model]]:
    """The three tables in creation order (drop them reversed)."""

    class JobV10(peewee.Model):
        id = peewee.CharField(max_length=36, primary_key=True)

        class Meta:
            table_name = "skillq_job"

    class JobWebhookV10(peewee.Model):
        job = peewee.ForeignKeyField(
            JobV10, column_name="job_id", primary_key=True, on_delete="CASCADE"
        )
        callback_url = peewee.TextField(null=True)
        notified_for = peewee.DateTimeField(null=True)

        class Meta:
            table_name = "skillq_job_webhook"

    class WebhookDeliveryV10(peewee.Model):
        id = peewee.CharField(max_length=40, primary_key=True)
        job = peewee.ForeignKeyField(JobV10, column_name="job_id", on_delete="CASCADE", index=True)
        event = peewee.CharField(max_length=32)
        url = peewee.TextField()
        source = peewee.CharField(max_length=16)
        payload = peewee.TextField()
        state = peewee.CharField(max_length=16)
        attempts = peewee.IntegerField(default=0)
        created_at = peewee.DateTimeField()
        next_attempt_at = peewee.DateTimeField()
        delivered_at = peewee.DateTimeField(null=True)
        last_error = peewee.TextField(null=True)

        class Meta:
            table_name = "skillq_webhook_delivery"
            indexes = ((("state", "next_attempt_at"), False),)

    class WebhookAttemptV10(peewee.Model):
        delivery = peewee.ForeignKeyField(
            WebhookDeliveryV10, column_name="delivery_id", on_delete="CASCADE"
        )
        attempt = peewee.IntegerField()
        started_at = peewee.DateTimeField()
        finished_at = peewee.DateTimeField(null=True)
        status_code = peewee.IntegerField(null=True)
        error = peewee.TextField(null=True)

        class Meta:
            table_name = "skillq_webhook_attempt"
            indexes = ((("delivery", "attempt"), True),)

    models = [JobV10, JobWebhookV10, WebhookDeliveryV10, WebhookAttemptV10]
    for model in models:
        model._meta.set_database(database)
    return models[1:]


def create_webhook_tables(database: peewee.Database) -> None:
    for model in webhook_tables_v10(database):
        model.create_table(safe=False)


def drop_webhook_tables(database: peewee.Database) -> None:
    for model in reversed(webhook_tables_v10(database)):
        model.drop_table(safe=False)
