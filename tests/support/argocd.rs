//! idplane's Argo CD health check (`docs/argocd/health.lua`, one script
//! for the four kinds) run as Argo CD runs it: Lua 5.1 (Argo CD's
//! gopher-lua) with the base, table, string and math libraries, the object
//! as the global `obj`, and a table `{status, message}` returned.

use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib, Table};
use serde_json::Value;

use super::process::root;

/// What the script says of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgoHealth {
    pub status: String,
    pub message: String,
}

/// The script's path in the repository.
pub const HEALTH_LUA: &str = "docs/argocd/health.lua";

/// The script's text.
pub fn health_script() -> String {
    std::fs::read_to_string(root().join(HEALTH_LUA)).expect("docs/argocd/health.lua")
}

/// Runs `script` on `obj`; the Lua error, if it fails.
pub fn run_health(script: &str, obj: &Value) -> Result<ArgoHealth, String> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    // JSON null is Lua nil for Argo CD, not a sentinel value.
    let options = mlua::serde::SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).map_err(|e| e.to_string())?;
    lua.globals().set("obj", value).map_err(|e| e.to_string())?;
    let hs: Table = lua
        .load(script)
        .set_name("health.lua")
        .eval()
        .map_err(|e| e.to_string())?;
    let field = |name: &str| -> Result<String, String> {
        hs.get::<Option<String>>(name)
            .map_err(|e| e.to_string())
            .map(Option::unwrap_or_default)
    };
    Ok(ArgoHealth {
        status: field("status")?,
        message: field("message")?,
    })
}

/// The health Argo CD shows for a live object; panics when the script fails.
pub fn argocd_health(obj: &Value) -> ArgoHealth {
    run_health(&health_script(), obj).unwrap_or_else(|e| panic!("health.lua failed: {e}\n{obj}"))
}
