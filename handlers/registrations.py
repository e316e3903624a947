"""User Registered For Exam: one `exam.registration.created` event per registration."""

from __future__ import annotations

from handlers.event_ids import event_id
from handlers.routing import HandlerOutput, SourceRecord
from handlers.settings import RulesSettings
from handlers.shared_data import learner_data
from schemas.cloudevents import DerivedEvent
from schemas.derived import RegistrationCreated
from schemas.platform import UserRegisteredForExam


def derive_registration_created(
    webhook: UserRegisteredForExam, source: SourceRecord, *, rules: RulesSettings
) -> HandlerOutput:
    """The exam (id, name, URL, schedule) and user group a learner was registered for."""
    user, exam, group, portal_id = webhook.user, webhook.exam, webhook.user_group, webhook.portal.id
    at = webhook.meta.timestamp
    # As `RegistrationCreated` has it on the wire: camelCase, in its field order.
    data = {
        "learner": learner_data(user),
        "portalId": portal_id,
        "exam": {
            "id": exam.object_id,
            "name": exam.name,
            "url": exam.url,
            "schedule": {"openDate": exam.schedule.open_date, "closeDate": exam.schedule.close_date},
        },
        "userGroup": None if group is None else {"id": group.object_id, "name": group.name},
        "registeredAt": at,
        "source": source._asdict(),
    }
    event = DerivedEvent(
        type=RegistrationCreated.event_type,
        # A learner registered again (after a withdrawal) is a new registration: its time tells them apart.
        id=event_id(portal_id, exam.object_id, user.id, at, RegistrationCreated.event_type),
        source=f"{rules.ce_source}:portal:{portal_id}",
        subject=exam.object_id,
        time=at,
        key=user.id,
        data=data,
        data_model=RegistrationCreated,
    )
    return HandlerOutput(events=(event,))
