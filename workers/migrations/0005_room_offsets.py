"""Per-room offsets: a Room per room name, and every stored message numbered 1, 2, 3… in its room by id."""

from django.db import migrations, models


def number_existing_messages(apps, schema_editor):
    Message = apps.get_model("workers", "Message")
    Room = apps.get_model("workers", "Room")
    rooms = Message.objects.values_list("room", flat=True).distinct()
    for room in rooms:
        offset = 0
        last_created = None
        for message in Message.objects.filter(room=room).order_by("id").only("id", "created").iterator():
            offset += 1
            Message.objects.filter(pk=message.pk).update(offset=offset)
            last_created = message.created
        Room.objects.create(name=room, last_offset=offset, last_message_at=last_created)


class Migration(migrations.Migration):
    dependencies = [("workers", "0004_removed_machine")]

    operations = [
        migrations.CreateModel(
            name="Room",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=64, unique=True)),
                ("last_offset", models.PositiveBigIntegerField(default=0)),
                ("last_message_at", models.DateTimeField(blank=True, db_index=True, null=True)),
            ],
        ),
        migrations.AddField(model_name="message", name="offset", field=models.PositiveBigIntegerField(null=True)),
        migrations.RunPython(number_existing_messages, migrations.RunPython.noop),
        migrations.AlterField(model_name="message", name="offset", field=models.PositiveBigIntegerField()),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.UniqueConstraint(fields=("room", "offset"), name="message_room_offset_once"),
        ),
    ]
