"""The clinic CRM example's data access, twice: with the ORM (OrmStore, the default) and with psycopg (SqlStore).

Both take validated values and return plain JSON-ready dicts with the same keys, so the views don't know
which one they use. Writes flush at once, so that a constraint violation surfaces in the view (as a 409).
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from tenant_migrations.models import Appointment, Lead, Message, Pipeline, PipelineStage, User

USER_COLUMNS = ("id", "email", "name", "role", "status", "created_at")
LEAD_COLUMNS = ("id", "full_name", "email", "phone", "source", "pipeline_id", "stage_id", "owner_id", "notes",
                "score", "created_at", "updated_at")
MESSAGE_COLUMNS = ("id", "lead_id", "direction", "channel", "body", "media_url", "status", "sent_at", "created_at")
APPOINTMENT_COLUMNS = ("id", "lead_id", "procedure_id", "doctor_id", "starts_at", "ends_at", "status", "notes",
                       "created_at")


def plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def like_pattern(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class OrmStore:
    """On a SQLAlchemy Session (tenant_runtime.flask.db_session()) and the tenant schema's models."""

    def __init__(self, session: Session) -> None:
        self.session = session

    @staticmethod
    def _json(obj: Any, columns: tuple[str, ...]) -> dict[str, Any]:
        return {column: plain(getattr(obj, column)) for column in columns}

    def users(self) -> list[dict[str, Any]]:
        return [self._json(user, USER_COLUMNS) for user in self.session.scalars(select(User).order_by(User.id))]

    def pipelines(self) -> list[dict[str, Any]]:
        query = select(Pipeline).options(selectinload(Pipeline.stages)).order_by(Pipeline.position, Pipeline.id)
        return [{"id": p.id, "name": p.name, "position": p.position,
                 "stages": [{"id": s.id, "name": s.name, "position": s.position} for s in p.stages]}
                for p in self.session.scalars(query)]

    def create_pipeline(self, name: str, stages: list[str]) -> int:
        position = self.session.scalar(select(func.coalesce(func.max(Pipeline.position) + 1, 0)))
        pipeline = Pipeline(name=name, position=position,
                            stages=[PipelineStage(name=stage, position=n) for n, stage in enumerate(stages)])
        self.session.add(pipeline)
        self.session.flush()
        return pipeline.id

    def leads(self, *, limit: int, offset: int, pipeline_id: int | None, stage_id: int | None,
              q: str | None) -> list[dict[str, Any]]:
        query = select(Lead).order_by(Lead.id.desc()).limit(limit).offset(offset)
        if pipeline_id is not None:
            query = query.where(Lead.pipeline_id == pipeline_id)
        if stage_id is not None:
            query = query.where(Lead.stage_id == stage_id)
        if q:
            pattern = like_pattern(q)
            query = query.where(or_(Lead.full_name.ilike(pattern), Lead.email.ilike(pattern)))
        return [self._json(lead, LEAD_COLUMNS) for lead in self.session.scalars(query)]

    def lead(self, lead_id: int) -> dict[str, Any] | None:
        lead = self.session.get(Lead, lead_id)
        return None if lead is None else self._json(lead, LEAD_COLUMNS)

    def first_stage(self) -> tuple[int, int] | None:
        row = self.session.execute(
            select(PipelineStage.pipeline_id, PipelineStage.id).join(PipelineStage.pipeline)
            .order_by(Pipeline.position, Pipeline.id, PipelineStage.position).limit(1)).first()
        return None if row is None else (row.pipeline_id, row.id)

    def pipeline_of_stage(self, stage_id: int) -> int | None:
        return self.session.scalar(select(PipelineStage.pipeline_id).where(PipelineStage.id == stage_id))

    def create_lead(self, values: dict[str, Any]) -> dict[str, Any]:
        lead = Lead(**values)
        self.session.add(lead)
        self.session.flush()
        return self._json(lead, LEAD_COLUMNS)

    def update_lead(self, lead_id: int, values: dict[str, Any]) -> dict[str, Any] | None:
        lead = self.session.get(Lead, lead_id)
        if lead is None:
            return None
        for column, value in values.items():
            setattr(lead, column, value)
        lead.updated_at = func.now()
        self.session.flush()
        self.session.refresh(lead, ["updated_at"])
        return self._json(lead, LEAD_COLUMNS)

    def messages(self, lead_id: int) -> list[dict[str, Any]]:
        query = select(Message).where(Message.lead_id == lead_id).order_by(Message.id)
        return [self._json(message, MESSAGE_COLUMNS) for message in self.session.scalars(query)]

    def add_message(self, lead_id: int, values: dict[str, Any]) -> dict[str, Any]:
        message = Message(lead_id=lead_id, **values)
        self.session.add(message)
        self.session.flush()
        return self._json(message, MESSAGE_COLUMNS)

    def appointments(self, lead_id: int) -> list[dict[str, Any]]:
        query = select(Appointment).where(Appointment.lead_id == lead_id).order_by(Appointment.starts_at)
        return [self._json(appointment, APPOINTMENT_COLUMNS) for appointment in self.session.scalars(query)]

    def add_appointment(self, lead_id: int, values: dict[str, Any]) -> dict[str, Any]:
        appointment = Appointment(lead_id=lead_id, **values)
        self.session.add(appointment)
        self.session.flush()
        return self._json(appointment, APPOINTMENT_COLUMNS)


class SqlStore:
    """On a psycopg connection (tenant_runtime.flask.get_connection()): plain SQL, the same answers."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def _query(self, query: sql.Composable | str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return [{key: plain(value) for key, value in row.items()} for row in cur.fetchall()]

    @staticmethod
    def _columns(columns: tuple[str, ...]) -> sql.Composable:
        return sql.SQL(", ").join(map(sql.Identifier, columns))

    def _insert(self, table: str, values: dict[str, Any], returning: tuple[str, ...]) -> dict[str, Any]:
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
            sql.Identifier(table), self._columns(tuple(values)), sql.SQL(", ").join(sql.Placeholder() * len(values)),
            self._columns(returning))
        return self._query(query, tuple(values.values()))[0]

    def users(self) -> list[dict[str, Any]]:
        return self._query(sql.SQL("SELECT {} FROM users ORDER BY id").format(self._columns(USER_COLUMNS)))

    def pipelines(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT p.id, p.name, p.position, s.id AS stage_id, s.name AS stage_name, "
                           "s.position AS stage_position FROM pipelines p LEFT JOIN pipeline_stages s "
                           "ON s.pipeline_id = p.id ORDER BY p.position, p.id, s.position")
        pipelines: dict[int, dict[str, Any]] = {}
        for row in rows:
            pipeline = pipelines.setdefault(row["id"], {"id": row["id"], "name": row["name"],
                                                        "position": row["position"], "stages": []})
            if row["stage_id"] is not None:
                pipeline["stages"].append({"id": row["stage_id"], "name": row["stage_name"],
                                           "position": row["stage_position"]})
        return list(pipelines.values())

    def create_pipeline(self, name: str, stages: list[str]) -> int:
        pipeline = self.conn.execute(
            "INSERT INTO pipelines (name, position) VALUES (%s, COALESCE((SELECT max(position) + 1 FROM pipelines), 0)) "
            "RETURNING id", (name,)).fetchone()[0]
        with self.conn.cursor() as cur:
            cur.executemany("INSERT INTO pipeline_stages (pipeline_id, name, position) VALUES (%s, %s, %s)",
                            [(pipeline, stage, position) for position, stage in enumerate(stages)])
        return pipeline

    def leads(self, *, limit: int, offset: int, pipeline_id: int | None, stage_id: int | None,
              q: str | None) -> list[dict[str, Any]]:
        where: list[sql.Composable] = []
        params: list[Any] = []
        for column, value in (("pipeline_id", pipeline_id), ("stage_id", stage_id)):
            if value is not None:
                where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if q:
            where.append(sql.SQL("(full_name ILIKE %s OR email ILIKE %s)"))
            params += [like_pattern(q)] * 2
        clause = sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
        return self._query(sql.SQL("SELECT {} FROM leads {} ORDER BY id DESC LIMIT %s OFFSET %s").format(
            self._columns(LEAD_COLUMNS), clause), (*params, limit, offset))

    def lead(self, lead_id: int) -> dict[str, Any] | None:
        rows = self._query(sql.SQL("SELECT {} FROM leads WHERE id = %s").format(self._columns(LEAD_COLUMNS)),
                           (lead_id,))
        return rows[0] if rows else None

    def first_stage(self) -> tuple[int, int] | None:
        rows = self._query("SELECT s.pipeline_id, s.id FROM pipelines p JOIN pipeline_stages s "
                           "ON s.pipeline_id = p.id ORDER BY p.position, p.id, s.position LIMIT 1")
        return (rows[0]["pipeline_id"], rows[0]["id"]) if rows else None

    def pipeline_of_stage(self, stage_id: int) -> int | None:
        rows = self._query("SELECT pipeline_id FROM pipeline_stages WHERE id = %s", (stage_id,))
        return rows[0]["pipeline_id"] if rows else None

    def create_lead(self, values: dict[str, Any]) -> dict[str, Any]:
        return self._insert("leads", values, LEAD_COLUMNS)

    def update_lead(self, lead_id: int, values: dict[str, Any]) -> dict[str, Any] | None:
        assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(column)) for column in values)
        rows = self._query(sql.SQL("UPDATE leads SET {}, updated_at = now() WHERE id = %s RETURNING {}").format(
            assignments, self._columns(LEAD_COLUMNS)), (*values.values(), lead_id))
        return rows[0] if rows else None

    def messages(self, lead_id: int) -> list[dict[str, Any]]:
        return self._query(sql.SQL("SELECT {} FROM messages WHERE lead_id = %s ORDER BY id").format(
            self._columns(MESSAGE_COLUMNS)), (lead_id,))

    def add_message(self, lead_id: int, values: dict[str, Any]) -> dict[str, Any]:
        return self._insert("messages", {"lead_id": lead_id, **values}, MESSAGE_COLUMNS)

    def appointments(self, lead_id: int) -> list[dict[str, Any]]:
        return self._query(sql.SQL("SELECT {} FROM appointments WHERE lead_id = %s ORDER BY starts_at").format(
            self._columns(APPOINTMENT_COLUMNS)), (lead_id,))

    def add_appointment(self, lead_id: int, values: dict[str, Any]) -> dict[str, Any]:
        return self._insert("appointments", {"lead_id": lead_id, **values}, APPOINTMENT_COLUMNS)
