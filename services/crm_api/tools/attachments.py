"""Documents and notes attached to other records."""

from __future__ import annotations

from typing import Any

from crm_api.context import ToolContext
from crm_api.domain import ENTITY_TYPE_TABLES
from crm_api.repository import new_id, public
from crm_api.schemas import AddNote, DocumentOut, NoteOut, UploadDocument
from crm_api.tools.common import reference, repo
from crm_api.tools.registry import ToolKind, tool


@tool(
    "upload_document",
    kind=ToolKind.WRITE,
    request=UploadDocument,
    response=DocumentOut,
    tag="attachments",
)
async def upload_document(ctx: ToolContext, args: UploadDocument) -> dict[str, Any]:
    """Attach a document to an opportunity, contract, quote or client.

    Rules: entity_type is one of Opportunity, Contract, Quote, Client and entity_id must
    exist. file_name is a plain name with an extension: no "/", "\\" or "..", and only office,
    text and image types (pdf, docx, xlsx, pptx, txt, csv, png, jpg, ...). Closed deals may
    still get documents.
    Example: {"entity_type": "Opportunity", "entity_id": "<id>",
    "file_name": "signed_contract.pdf", "file_url": "https://files.example.com/c.pdf"}
    """
    table = ENTITY_TYPE_TABLES[args.entity_type.value]
    await reference(ctx, table, args.entity_id, "entity_id")
    row = await repo(ctx, "document").insert(
        {
            "document_id": new_id(),
            "entity_type": args.entity_type.value,
            "entity_id": args.entity_id,
            "file_name": args.file_name,
            "file_url": args.file_url,
            "uploaded_by": ctx.episode.actor_name,
            "uploaded_at": ctx.episode.now,
        }
    )
    return public(row)


@tool("add_note", kind=ToolKind.WRITE, request=AddNote, response=NoteOut, tag="attachments")
async def add_note(ctx: ToolContext, args: AddNote) -> dict[str, Any]:
    """Add an internal note to an opportunity, client, contact, quote or contract.

    Rules: entity_type is one of Opportunity, Client, Contact, Quote, Contract; the entity
    must exist; content must not be blank. Closed deals may still get notes.
    Example: {"entity_type": "Client", "entity_id": "<id>", "content": "Prefers email."}
    """
    table = ENTITY_TYPE_TABLES[args.entity_type.value]
    await reference(ctx, table, args.entity_id, "entity_id")
    row = await repo(ctx, "note").insert(
        {
            "note_id": new_id(),
            "entity_type": args.entity_type.value,
            "entity_id": args.entity_id,
            "content": args.content,
            "created_by": ctx.episode.actor_name,
            "created_at": ctx.episode.now,
        }
    )
    return public(row)
