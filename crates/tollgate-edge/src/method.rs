//! MCP methods, classified once from a JSON-RPC method name, so that handlers match on a
//! type instead of comparing strings in several places.

/// An MCP method the edge knows by name; anything else is [`McpMethod::Other`] and is
/// forwarded as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpMethod {
    Initialize,
    Ping,
    ToolsCall,
    ToolsList,
    ResourcesList,
    ResourcesTemplatesList,
    ResourcesRead,
    ResourcesSubscribe,
    ResourcesUnsubscribe,
    PromptsList,
    PromptsGet,
    CompletionComplete,
    LoggingSetLevel,
    NotificationsInitialized,
    NotificationsCancelled,
    NotificationsProgress,
    NotificationsRootsListChanged,
    SubscriptionsListen,
    Other,
}

const NAMES: [(&str, McpMethod); 18] = [
    ("initialize", McpMethod::Initialize),
    ("ping", McpMethod::Ping),
    ("tools/call", McpMethod::ToolsCall),
    ("tools/list", McpMethod::ToolsList),
    ("resources/list", McpMethod::ResourcesList),
    ("resources/templates/list", McpMethod::ResourcesTemplatesList),
    ("resources/read", McpMethod::ResourcesRead),
    ("resources/subscribe", McpMethod::ResourcesSubscribe),
    ("resources/unsubscribe", McpMethod::ResourcesUnsubscribe),
    ("prompts/list", McpMethod::PromptsList),
    ("prompts/get", McpMethod::PromptsGet),
    ("completion/complete", McpMethod::CompletionComplete),
    ("logging/setLevel", McpMethod::LoggingSetLevel),
    ("notifications/initialized", McpMethod::NotificationsInitialized),
    ("notifications/cancelled", McpMethod::NotificationsCancelled),
    ("notifications/progress", McpMethod::NotificationsProgress),
    (
        "notifications/roots/list_changed",
        McpMethod::NotificationsRootsListChanged,
    ),
    ("subscriptions/listen", McpMethod::SubscriptionsListen),
];

impl McpMethod {
    /// The method a JSON-RPC method name names (exactly: MCP method names are
    /// case-sensitive).
    pub fn of(name: &str) -> McpMethod {
        NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(McpMethod::Other, |(_, m)| *m)
    }

    /// The method's name (`""` for [`McpMethod::Other`]).
    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(_, m)| *m == self).map_or("", |(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify_exactly() {
        for (name, method) in NAMES {
            assert_eq!(McpMethod::of(name), method);
            assert_eq!(method.name(), name);
        }
        assert_eq!(McpMethod::of("Tools/Call"), McpMethod::Other);
        assert_eq!(McpMethod::of("tools/call "), McpMethod::Other);
    }
}
