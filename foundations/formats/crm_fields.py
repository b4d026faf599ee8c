"""The CRM custom fields apro-sync writes: one catalog shared by the planner and `apro-sync provision`.

The planner addresses fields by `key` (a stable logical name); the sink resolves each key to the location's
GoHighLevel custom-field id (found by `field_key`, else by name, created by provisioning when missing).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class DataType(StrEnum):
    """GoHighLevel custom-field data types (spelling from the official spec, including MONETORY)."""

    TEXT = "TEXT"
    LARGE_TEXT = "LARGE_TEXT"
    DATE = "DATE"
    MONETORY = "MONETORY"
    NUMERICAL = "NUMERICAL"


@dataclass(frozen=True)
class CustomField:
    key: str  # logical key used by the planner
    name: str  # display name, as the seed spells it
    data_type: DataType
    apro_folder: bool  # belongs in the "Aesthetics Pro" folder

    @property
    def field_key(self) -> str:
        """GoHighLevel's `fieldKey` for a contact field created with this name."""
        return f"contact.{self.key}"


APRO_CLIENT_ID = CustomField("apro_client_id", "APro Client ID", DataType.TEXT, True)
APRO_DOB = CustomField("apro_dob", "APro DOB", DataType.DATE, True)
APRO_LOCATION = CustomField("apro_location", "APro Location", DataType.TEXT, True)
APRO_APPT_ID = CustomField("apro_appt_id", "APro Appt ID", DataType.TEXT, True)
APRO_PROVIDER = CustomField("apro_provider", "APro Provider", DataType.TEXT, True)
APRO_APPT_STATUS = CustomField("apro_appt_status", "APro Appt Status", DataType.TEXT, True)
APRO_APPT_DATE = CustomField("apro_appt_date", "APro Appt Date", DataType.DATE, True)
APRO_INVOICE_ID = CustomField("apro_invoice_id", "APro Invoice ID", DataType.TEXT, True)
APRO_APPT_SERVICES = CustomField("apro_appt_services", "APro Appt Services", DataType.TEXT, True)
APRO_APPT_SERVICE_TYPE = CustomField("apro_appt_service_type", "APro Appt Service Type", DataType.TEXT, True)
NEXT_VISIT_DATE = CustomField("next_visit_date", "Next Visit Date", DataType.DATE, False)
NEXT_VISIT_SERVICE = CustomField("next_visit_service", "Next Visit Service", DataType.TEXT, False)
LAST_VISIT_DATE = CustomField("last_visit_date", "Last Visit Date", DataType.DATE, False)
LAST_VISIT_SERVICE = CustomField("last_visit_service", "Last Visit Service", DataType.TEXT, False)
INVOICE_PAID_AMOUNT = CustomField("invoice_paid_amount", "Invoice Paid Amount", DataType.MONETORY, False)
PATIENT_LIFETIME_VALUE = CustomField("patient_lifetime_value", "Patient Lifetime Value", DataType.MONETORY, False)
APRO_MEMBERSHIP = CustomField("apro_membership", "APro Membership", DataType.TEXT, True)
APRO_MEMBERSHIP_STATUS = CustomField("apro_membership_status", "APro Membership Status", DataType.TEXT, True)
APRO_MEMBERSHIP_RENEWAL_DATE = CustomField("apro_membership_renewal_date", "APro Membership Renewal Date",
                                           DataType.DATE, True)

ALL_FIELDS: tuple[CustomField, ...] = (
    APRO_CLIENT_ID,
    APRO_DOB,
    APRO_LOCATION,
    APRO_APPT_ID,
    APRO_PROVIDER,
    APRO_APPT_STATUS,
    APRO_APPT_DATE,
    APRO_INVOICE_ID,
    APRO_APPT_SERVICES,
    APRO_APPT_SERVICE_TYPE,
    NEXT_VISIT_DATE,
    NEXT_VISIT_SERVICE,
    LAST_VISIT_DATE,
    LAST_VISIT_SERVICE,
    INVOICE_PAID_AMOUNT,
    PATIENT_LIFETIME_VALUE,
    APRO_MEMBERSHIP,
    APRO_MEMBERSHIP_STATUS,
    APRO_MEMBERSHIP_RENEWAL_DATE,
)
BY_KEY = {f.key: f for f in ALL_FIELDS}
APRO_FOLDER_NAME = "Aesthetics Pro"

# Pipeline and workflow names from the seed; the locations file may override them (by name or id).
PIPELINE_NAME = "Lead to Patient"
STAGE_BOOKED = "Booked"
STAGE_CANCEL_NO_SHOW = "Cancel/No-Show"
STAGE_PATIENT = "Patient"
STAGE_NEW_LEAD = "New Lead"
WORKFLOW_APPOINTMENTS_UPDATE = "APro Appointments Update"
WORKFLOW_INVOICE_PAID = "APro Invoice Paid"
WORKFLOW_BIRTHDAY = "APro Birthday"
