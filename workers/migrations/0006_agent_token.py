"""Agent tokens: named bearer tokens for the report API, stored as their SHA-256."""

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('workers', '0005_room_offsets'),
    ]

    operations = [
        migrations.CreateModel(
            name='AgentToken',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text='Shown in logs and metrics: say who holds it and since when, e.g. rack-3-2026-06.', max_length=64, unique=True, validators=[django.core.validators.RegexValidator('^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\\Z', "a token's name is 1-64 letters, digits, '_', '.' or '-'")])),
                ('digest', models.CharField(editable=False, help_text='SHA-256 of the token, hex.', max_length=64, unique=True)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('revoked_at', models.DateTimeField(blank=True, editable=False, null=True)),
            ],
            options={
                'ordering': ['name'],
                'constraints': [models.CheckConstraint(condition=models.Q(('name', 'env'), _negated=True), name='agent_token_name_is_not_env', violation_error_message="'env' is FLEET_TOKEN's name: choose another.")],
            },
        ),
    ]
