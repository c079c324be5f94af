//! `conformance_pack`: the real capgate CLI with the fixture tools of the official MCP conformance
//! suite (`@modelcontextprotocol/conformance`) registered next to the built-in ones.
//!
//! `tests/conformance.rs` mints a token for these tools, starts `conformance_pack serve --http`
//! and points the suite at it. The fixtures are written against capgate's public Tool API only
//! (`TypedTool`, `DynamicTool`, `ToolContext`), so every scenario exercises the same path a real
//! tool takes: schema validation, the guard, the audit line, dispatch. Each fixture is a `read`
//! operation on its default resource `tool:<name>`, so a plain read-only task can call all of them.
//!
//! The names, texts and schemas below are the ones the suite's scenarios ask for; where the suite
//! only checks the shape of a result, the comment says so.
//!
//! Run it like capgate itself: `cargo run --example conformance_pack -- serve --http 127.0.0.1:0`.

// Sampling, logging and the `LoggingLevel` type are deprecated in rmcp because protocol 2026-07-28
// (SEP-2577) drops them, but the suite tests the 2025 revisions, where they are part of the
// protocol; capgate's host serves those revisions too.
#![allow(deprecated)]

use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::Duration;

use capgate::core::rmcp::model::{
    ContentBlock, CreateMessageRequestParams, ElicitRequestParams, ElicitationAction,
    ElicitationSchema, LoggingLevel, ResourceContents, Role, SamplingMessage,
    SamplingMessageContentBlock,
};
use capgate::core::rmcp::schemars::JsonSchema;
use capgate::core::rmcp::service::{ElicitationMode, Peer, RoleServer};
use capgate::core::{
    Arguments, Content, DynamicTool, Operation, Registry, ToolContext, ToolError, ToolOutput,
    ToolSpec, TypedTool,
};
use capgate::server::{Config, Error};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// How long a fixture waits for the client to answer a sampling or elicitation request. The
/// suite answers at once; the bound only keeps a broken client from pinning a call forever.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause between the notifications of the logging and progress fixtures. The suite asks for
/// about 50 ms so that a client sees several notifications arrive during one call.
const STEP: Duration = Duration::from_millis(50);

fn main() -> ExitCode {
    capgate::main_with(|registry, _config: &Config| register_fixtures(registry))
}

/// Registers every fixture tool the server scenarios of the suite call.
fn register_fixtures(registry: &mut Registry) -> Result<(), Error> {
    content::register(registry)?;
    notifications::register(registry)?;
    client_requests::register(registry)?;
    schemas::register(registry)?;
    readable::register(registry)?;
    Ok(())
}

/// Arguments of a fixture that takes none. `deny_unknown_fields` makes the derived schema say
/// `additionalProperties: false`, so a client that sends stray arguments hears about it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "capgate::core::rmcp::schemars")]
struct NoArgs {}

/// Waits `d`, or fails the call when the client cancels it meanwhile: a fixture that sleeps
/// should still honour `notifications/cancelled` like a real tool.
async fn pause(ctx: &ToolContext, d: Duration) -> Result<(), ToolError> {
    tokio::select! {
        () = tokio::time::sleep(d) => Ok(()),
        () = ctx.cancelled().cancelled() => Err(ToolError::failed("cancelled by the client")),
    }
}

/// The client connection, which a tool that talks back to the client cannot do without.
fn peer(ctx: &ToolContext) -> Result<&Peer<RoleServer>, ToolError> {
    ctx.peer()
        .ok_or_else(|| ToolError::failed("this tool needs a connected MCP client"))
}

/// Fixtures whose whole point is the content blocks they return: `tools-call-simple-text`,
/// `-image`, `-audio`, `-embedded-resource`, `-mixed-content` and `-error`.
mod content {
    use super::*;

    const SIMPLE_TEXT: &str = "This is a simple text response for testing.";
    const EMBEDDED_URI: &str = "test://embedded-resource";
    const EMBEDDED_TEXT: &str = "This is an embedded resource content.";
    const MIXED_URI: &str = "test://mixed-content-resource";
    const ERROR_TEXT: &str = "This tool intentionally returns an error for testing";

    pub(super) fn register(registry: &mut Registry) -> Result<(), Error> {
        registry.register(TypedTool::new(
            "test_simple_text",
            "Returns one fixed text block.",
            Operation::Read,
            |_: NoArgs, _, _| async { Ok(ToolOutput::text(SIMPLE_TEXT)) },
        ))?;
        registry.register(TypedTool::new(
            "test_image_content",
            "Returns a 1x1 red PNG as an image block.",
            Operation::Read,
            |_: NoArgs, _, _| async { Ok(ToolOutput::content(vec![red_pixel()])) },
        ))?;
        registry.register(TypedTool::new(
            "test_audio_content",
            "Returns a 10 ms WAV tone as an audio block.",
            Operation::Read,
            |_: NoArgs, _, _| async {
                Ok(ToolOutput::content(vec![ContentBlock::audio(
                    media::TONE_WAV_BASE64.as_str(),
                    "audio/wav",
                )]))
            },
        ))?;
        registry.register(TypedTool::new(
            "test_embedded_resource",
            "Returns a text resource embedded in the result.",
            Operation::Read,
            |_: NoArgs, _, _| async {
                Ok(ToolOutput::content(vec![ContentBlock::resource(
                    ResourceContents::text(EMBEDDED_TEXT, EMBEDDED_URI)
                        .with_mime_type("text/plain"),
                )]))
            },
        ))?;
        registry.register(TypedTool::new(
            "test_multiple_content_types",
            "Returns a text, an image and an embedded JSON resource in one result.",
            Operation::Read,
            |_: NoArgs, _, _| async {
                let resource = json!({"test": "data", "value": 123}).to_string();
                Ok(ToolOutput::content(vec![
                    ContentBlock::text("Multiple content types test:"),
                    red_pixel(),
                    ContentBlock::resource(
                        ResourceContents::text(resource, MIXED_URI)
                            .with_mime_type("application/json"),
                    ),
                ]))
            },
        ))?;
        // A tool failure is a result with `isError: true` that the model can read, not a
        // JSON-RPC error: `ToolError::failed` is how a capgate tool says so.
        registry.register(TypedTool::new(
            "test_error_handling",
            "Always fails, to show how a tool error reaches the client.",
            Operation::Read,
            |_: NoArgs, _, _| async { Err(ToolError::failed(ERROR_TEXT)) },
        ))?;
        Ok(())
    }

    fn red_pixel() -> Content {
        ContentBlock::image(media::RED_PIXEL_PNG_BASE64.as_str(), "image/png")
    }
}

/// The fixture resources and prompts (`resources-*`, `prompts-*`, `completion-complete`),
/// registered through the core's registration API beside the tools: natively registered
/// resources are the pseudo-tool `resources` (resource = the URI), prompts the pseudo-tool
/// `prompts` (resource = `prompt:<name>`), so a read or a fetch passes the guard and the audit
/// log like a tool call.
mod readable {
    use super::*;
    use capgate::core::rmcp::model::{
        GetPromptResult, Prompt, PromptArgument, PromptMessage, ReadResourceResult, Resource,
        ResourceTemplate,
    };
    use capgate::core::{Prompts, Resources};

    pub(super) fn register(registry: &mut Registry) -> Result<(), Error> {
        let text = |text: &'static str| {
            move |uri: &str, _: &[(String, String)]| {
                Ok(ReadResourceResult::new(vec![
                    ResourceContents::text(text, uri).with_mime_type("text/plain"),
                ]))
            }
        };
        let resources = Resources::new()
            .resource(
                Resource::new("test://static-text", "static-text")
                    .with_description("A fixed text resource.")
                    .with_mime_type("text/plain"),
                text("This is the content of the static text resource."),
            )
            .resource(
                Resource::new("test://static-binary", "static-binary")
                    .with_description("A fixed binary resource: a 1x1 red PNG.")
                    .with_mime_type("image/png"),
                |uri, _| {
                    Ok(ReadResourceResult::new(vec![
                        ResourceContents::blob(media::RED_PIXEL_PNG_BASE64.as_str(), uri)
                            .with_mime_type("image/png"),
                    ]))
                },
            )
            .resource(
                Resource::new("test://watched-resource", "watched-resource")
                    .with_description("A resource clients may subscribe to.")
                    .with_mime_type("text/plain"),
                text("Watched resource content."),
            )
            .template(
                ResourceTemplate::new("test://template/{id}/data", "template-data")
                    .with_description("A resource per id; the id is echoed in the content.")
                    .with_mime_type("application/json"),
                |uri, vars| {
                    let id = vars.iter().find(|(k, _)| k == "id").map(|(_, v)| v.as_str());
                    let body = json!({"id": id, "templateTest": true, "data": format!("Data for ID: {}", id.unwrap_or_default())});
                    Ok(ReadResourceResult::new(vec![
                        ResourceContents::text(body.to_string(), uri)
                            .with_mime_type("application/json"),
                    ]))
                },
            );
        registry.register_resources(capgate::core::content::NATIVE_RESOURCES, resources)?;

        let required = |name: &str, description: &str| {
            let mut a = PromptArgument::new(name);
            a.description = Some(description.to_owned());
            a.required = Some(true);
            a
        };
        let arg = |args: &Map<String, Value>, name: &str| {
            args.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let prompts = Prompts::new()
            .prompt(
                Prompt::new(
                    "test_simple_prompt",
                    Some("A prompt without arguments."),
                    None,
                ),
                |_| {
                    Ok(GetPromptResult::new(vec![PromptMessage::new_text(
                        Role::User,
                        "This is a simple prompt for testing.",
                    )]))
                },
            )
            .prompt(
                Prompt::new(
                    "test_prompt_with_arguments",
                    Some("A prompt with two required arguments."),
                    Some(vec![
                        required("arg1", "First test argument"),
                        required("arg2", "Second test argument"),
                    ]),
                ),
                move |args| {
                    Ok(GetPromptResult::new(vec![PromptMessage::new_text(
                        Role::User,
                        format!(
                            "Prompt with arguments: arg1='{}', arg2='{}'",
                            arg(args, "arg1"),
                            arg(args, "arg2")
                        ),
                    )]))
                },
            )
            .prompt(
                Prompt::new(
                    "test_prompt_with_embedded_resource",
                    Some("A prompt that embeds a resource."),
                    Some(vec![required(
                        "resourceUri",
                        "URI of the resource to embed",
                    )]),
                ),
                move |args| {
                    let uri = arg(args, "resourceUri");
                    Ok(GetPromptResult::new(vec![
                        PromptMessage::new(
                            Role::User,
                            ContentBlock::resource(
                                ResourceContents::text(
                                    "Embedded resource content for testing.",
                                    uri,
                                )
                                .with_mime_type("text/plain"),
                            ),
                        ),
                        PromptMessage::new_text(
                            Role::User,
                            "Please process the embedded resource above.",
                        ),
                    ]))
                },
            )
            .prompt(
                Prompt::new(
                    "test_prompt_with_image",
                    Some("A prompt with an image."),
                    None,
                ),
                |_| {
                    Ok(GetPromptResult::new(vec![
                        PromptMessage::new(
                            Role::User,
                            ContentBlock::image(media::RED_PIXEL_PNG_BASE64.as_str(), "image/png"),
                        ),
                        PromptMessage::new_text(Role::User, "Please analyze the image above."),
                    ]))
                },
            );
        registry.register_prompts(capgate::core::content::NATIVE_PROMPTS, None, prompts)?;
        Ok(())
    }
}

/// Fixtures that talk to the client while they run: `tools-call-with-logging` and
/// `tools-call-with-progress`.
mod notifications {
    use super::*;

    pub(super) fn register(registry: &mut Registry) -> Result<(), Error> {
        // The suite sets the level to `debug` first and then expects three `info` messages;
        // `ctx.log` applies the session's `logging/setLevel`, so these are also filtered when a
        // client asks for `warning` and above.
        registry.register(TypedTool::new(
            "test_tool_with_logging",
            "Sends three info log messages about 50 ms apart while it runs.",
            Operation::Read,
            |_: NoArgs, _, ctx: ToolContext| async move {
                ctx.log(LoggingLevel::Info, json!("Tool execution started"))
                    .await;
                pause(&ctx, STEP).await?;
                ctx.log(LoggingLevel::Info, json!("Tool processing data"))
                    .await;
                pause(&ctx, STEP).await?;
                ctx.log(LoggingLevel::Info, json!("Tool execution completed"))
                    .await;
                Ok(ToolOutput::text(
                    "Logging test completed: sent 3 log messages.",
                ))
            },
        ))?;
        // Progress is only sent when the request carried `_meta.progressToken`; without one the
        // tool still takes the same time, as the scenario describes.
        registry.register(TypedTool::new(
            "test_tool_with_progress",
            "Reports progress 0, 50 and 100 of 100, about 50 ms apart.",
            Operation::Read,
            |_: NoArgs, _, ctx: ToolContext| async move {
                const TOTAL: f64 = 100.0;
                for (i, done) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                    if i > 0 {
                        pause(&ctx, STEP).await?;
                    }
                    ctx.progress(done, Some(TOTAL), Some(format!("{done}/{TOTAL}")))
                        .await;
                }
                Ok(ToolOutput::text(
                    "Progress test completed: reported 0, 50 and 100 of 100.",
                ))
            },
        ))?;
        Ok(())
    }
}

/// Fixtures that send requests *to* the client in the middle of a call: sampling and the three
/// elicitation scenarios. They go through `ctx.peer()`, the same client handle a real tool gets.
mod client_requests {
    use super::*;

    /// `test_sampling`'s arguments.
    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(crate = "capgate::core::rmcp::schemars")]
    struct SamplingArgs {
        /// The prompt to send to the client's model.
        prompt: String,
    }

    pub(super) fn register(registry: &mut Registry) -> Result<(), Error> {
        registry.register(TypedTool::new(
            "test_sampling",
            "Asks the client's model to answer `prompt` (sampling/createMessage) and returns the answer.",
            Operation::Read,
            |args: SamplingArgs, _, ctx: ToolContext| async move { sample(&ctx, args.prompt).await },
        ))?;
        // The three elicitation fixtures differ only in their form and the sentence they answer
        // with, so they are one run-time tool definition each, built from the form's JSON.
        for form in forms() {
            registry.register(form.into_tool()?)?;
        }
        Ok(())
    }

    async fn sample(ctx: &ToolContext, prompt: String) -> Result<ToolOutput, ToolError> {
        let peer = peer(ctx)?;
        // The spec forbids sampling requests to a client that did not declare the capability.
        let can_sample = peer
            .peer_info()
            .is_some_and(|info| info.capabilities.sampling.is_some());
        if !can_sample {
            return Err(ToolError::failed(
                "the client did not declare the `sampling` capability",
            ));
        }
        let request = CreateMessageRequestParams::new(
            vec![SamplingMessage::new(
                Role::User,
                SamplingMessageContentBlock::text(prompt),
            )],
            100,
        );
        let reply = tokio::time::timeout(CLIENT_REQUEST_TIMEOUT, peer.create_message(request))
            .await
            .map_err(|_| ToolError::failed("the client did not answer the sampling request"))?
            .map_err(|e| ToolError::failed(format!("sampling failed: {e}")))?;
        let text: Vec<String> = reply
            .message
            .content
            .into_vec()
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.clone()))
            .collect();
        Ok(ToolOutput::text(format!(
            "LLM response: {}",
            text.join("\n")
        )))
    }

    /// One elicitation fixture: the form it sends and how it reports the answer.
    struct Form {
        name: &'static str,
        description: &'static str,
        message: Message,
        /// The `requestedSchema`, exactly as the scenario inspects it.
        requested_schema: Value,
        /// The sentence the result starts with (the scenario documents it).
        reply: &'static str,
    }

    /// Where the message shown to the user comes from.
    #[derive(Clone, Copy)]
    enum Message {
        /// The required `message` argument of the call.
        FromArgument,
        /// A fixed sentence; the tool takes no arguments.
        Fixed(&'static str),
    }

    fn forms() -> Vec<Form> {
        vec![
            Form {
                name: "test_elicitation",
                description: "Asks the user for a username and an email (elicitation/create) and returns the answer.",
                message: Message::FromArgument,
                requested_schema: json!({
                    "type": "object",
                    "properties": {
                        "username": {"type": "string", "description": "User's response"},
                        "email": {"type": "string", "description": "User's email address"}
                    },
                    "required": ["username", "email"]
                }),
                reply: "User response",
            },
            // SEP-1034: every primitive type may carry a default the client pre-fills.
            Form {
                name: "test_elicitation_sep1034_defaults",
                description: "Elicits a form whose every primitive field has a default (SEP-1034).",
                message: Message::Fixed("Please review and update the form fields with defaults"),
                requested_schema: json!({
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "description": "User name", "default": "John Doe"},
                        "age": {"type": "integer", "description": "User age", "default": 30},
                        "score": {"type": "number", "description": "User score", "default": 95.5},
                        "status": {
                            "type": "string",
                            "description": "User status",
                            "enum": ["active", "inactive", "pending"],
                            "default": "active"
                        },
                        "verified": {"type": "boolean", "description": "Verification status", "default": true}
                    },
                    "required": []
                }),
                reply: "Elicitation completed",
            },
            // SEP-1330: the five ways a form can offer a choice.
            Form {
                name: "test_elicitation_sep1330_enums",
                description: "Elicits a form with all five enum styles: untitled, titled and legacy single-select, untitled and titled multi-select (SEP-1330).",
                message: Message::Fixed("Please select options from the enum fields"),
                requested_schema: json!({
                    "type": "object",
                    "properties": {
                        "untitledSingle": {
                            "type": "string",
                            "description": "Untitled single-select",
                            "enum": ["option1", "option2", "option3"]
                        },
                        "titledSingle": {
                            "type": "string",
                            "description": "Titled single-select",
                            "oneOf": [
                                {"const": "value1", "title": "First Option"},
                                {"const": "value2", "title": "Second Option"},
                                {"const": "value3", "title": "Third Option"}
                            ]
                        },
                        "legacyEnum": {
                            "type": "string",
                            "description": "Legacy titled single-select (enumNames, deprecated)",
                            "enum": ["opt1", "opt2", "opt3"],
                            "enumNames": ["Option One", "Option Two", "Option Three"]
                        },
                        "untitledMulti": {
                            "type": "array",
                            "description": "Untitled multi-select",
                            "items": {"type": "string", "enum": ["option1", "option2", "option3"]}
                        },
                        "titledMulti": {
                            "type": "array",
                            "description": "Titled multi-select",
                            "items": {
                                "anyOf": [
                                    {"const": "value1", "title": "First Choice"},
                                    {"const": "value2", "title": "Second Choice"},
                                    {"const": "value3", "title": "Third Choice"}
                                ]
                            }
                        }
                    },
                    "required": []
                }),
                reply: "Elicitation completed",
            },
        ]
    }

    impl Form {
        /// Checks the form once, at registration, through rmcp's typed elicitation schema: a
        /// form rmcp cannot represent is a startup error here, not a failed call later.
        fn into_tool(self) -> Result<DynamicTool, capgate::core::Error> {
            let schema: ElicitationSchema =
                serde_json::from_value(self.requested_schema).map_err(|e| {
                    capgate::core::Error::InvalidSchema {
                        name: self.name.to_owned(),
                        source: Box::new(e),
                    }
                })?;
            let input = match self.message {
                Message::FromArgument => json!({
                    "type": "object",
                    "properties": {"message": {"type": "string", "description": "The message to show the user."}},
                    "required": ["message"],
                    "additionalProperties": false
                }),
                Message::Fixed(_) => {
                    json!({"type": "object", "properties": {}, "additionalProperties": false})
                }
            };
            let spec = ToolSpec::new(self.name, self.description, Operation::Read, object(input));
            let (message, reply) = (self.message, self.reply);
            Ok(DynamicTool::new(spec, move |args: Arguments, _, ctx| {
                let schema = schema.clone();
                // The registry validated the arguments against the schema above, so a
                // `FromArgument` call always carries a string `message`.
                let text = match message {
                    Message::FromArgument => args
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    Message::Fixed(text) => text.to_owned(),
                };
                async move { elicit(&ctx, text, schema, reply).await }
            }))
        }
    }

    async fn elicit(
        ctx: &ToolContext,
        message: String,
        requested_schema: ElicitationSchema,
        reply: &str,
    ) -> Result<ToolOutput, ToolError> {
        let peer = peer(ctx)?;
        if !peer
            .supported_elicitation_modes()
            .contains(&ElicitationMode::Form)
        {
            return Err(ToolError::failed(
                "the client did not declare the `elicitation` capability (form mode)",
            ));
        }
        let request = ElicitRequestParams::FormElicitationParams {
            meta: None,
            message,
            requested_schema,
        };
        let answer = peer
            .create_elicitation_with_timeout(request, Some(CLIENT_REQUEST_TIMEOUT))
            .await
            .map_err(|e| ToolError::failed(format!("elicitation failed: {e}")))?;
        let action = match answer.action {
            ElicitationAction::Accept => "accept",
            ElicitationAction::Decline => "decline",
            ElicitationAction::Cancel => "cancel",
            _ => "unknown",
        };
        let content = answer.content.unwrap_or(Value::Null);
        let text = format!("{reply}: action={action}, content={content}");
        Ok(ToolOutput::text(text).with_structured(json!({"action": action, "content": content})))
    }
}

/// `json-schema-2020-12`: a tool whose input schema uses `$schema`, `$defs` and `$ref`, which
/// must reach `tools/list` exactly as written. A schema known only at run time is what
/// `DynamicTool` is for; a derived schema would be rewritten by schemars.
mod schemas {
    use super::*;

    pub(super) fn register(registry: &mut Registry) -> Result<(), Error> {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {
                        "street": {"type": "string"},
                        "city": {"type": "string"}
                    }
                }
            },
            "properties": {
                "name": {"type": "string"},
                "address": {"$ref": "#/$defs/address"}
            },
            "additionalProperties": false
        });
        let spec = ToolSpec::new(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            Operation::Read,
            object(schema),
        );
        // The registry has already validated the arguments against the schema above (including
        // the `$ref`), so the tool can simply echo what it accepted.
        registry.register(DynamicTool::new(spec, |args: Arguments, _, _| async move {
            let args = Value::Object(args);
            Ok(ToolOutput::text(format!("Received: {args}")).with_structured(args))
        }))?;
        Ok(())
    }
}

/// A JSON object literal as a schema map.
fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => unreachable!("schemas here are object literals, not {other}"),
    }
}

/// The binary fixtures.
mod media {
    use base64::Engine;

    use super::LazyLock;

    /// A 1x1 PNG holding one red pixel: signature, IHDR (1x1, 8-bit RGB), one IDAT (zlib of the
    /// scanline `00 ff 00 00`), IEND.
    const RED_PIXEL_PNG: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90,
        0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8,
        0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0xc9, 0xfe, 0x92, 0xef, 0x00, 0x00, 0x00,
        0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];

    /// The PNG, base64.
    pub(super) static RED_PIXEL_PNG_BASE64: LazyLock<String> =
        LazyLock::new(|| base64::engine::general_purpose::STANDARD.encode(RED_PIXEL_PNG));

    /// 10 ms of a 1 kHz square wave: 8 kHz, 8-bit unsigned, mono PCM WAV, base64.
    pub(super) static TONE_WAV_BASE64: LazyLock<String> = LazyLock::new(|| {
        base64::engine::general_purpose::STANDARD.encode(wav_square_wave(8_000, 1_000, 80))
    });

    /// A RIFF/WAVE file: `fmt ` chunk for 8-bit mono PCM, then `samples` samples of a square wave.
    fn wav_square_wave(rate: u32, freq: u32, samples: u32) -> Vec<u8> {
        let half_period = (rate / freq / 2).max(1);
        let data: Vec<u8> = (0..samples)
            .map(|i| {
                if (i / half_period).is_multiple_of(2) {
                    0xa0
                } else {
                    0x60
                }
            })
            .collect();
        let mut wav = Vec::new();
        wav.extend(b"RIFF");
        wav.extend((36 + data.len() as u32).to_le_bytes());
        wav.extend(b"WAVEfmt ");
        wav.extend(16u32.to_le_bytes()); // fmt chunk size
        wav.extend(1u16.to_le_bytes()); // PCM
        wav.extend(1u16.to_le_bytes()); // mono
        wav.extend(rate.to_le_bytes());
        wav.extend(rate.to_le_bytes()); // byte rate: rate * 1 channel * 1 byte
        wav.extend(1u16.to_le_bytes()); // block align
        wav.extend(8u16.to_le_bytes()); // bits per sample
        wav.extend(b"data");
        wav.extend((data.len() as u32).to_le_bytes());
        wav.extend(data);
        wav
    }
}
