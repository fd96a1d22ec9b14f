// LoRA Bridge: client-side helpers of the LoRA Training tab.
// In the WebUI this file is injected as a <script> into the page head; the standalone app adds it itself.

function loraBridgeLoraTag(name, weight) {
    var w = Number(weight);
    return "<lora:" + String(name || "").trim() + ":" + (isFinite(w) ? w : 0.7) + ">";
}

function loraBridgeRoot() {
    return typeof gradioApp === "function" ? gradioApp() : document;
}

// Put <lora:name:w> into the txt2img prompt (WebUI) or copy it to the clipboard (standalone).
// Returns the inputs unchanged so the Python side can show the tag in the tab's own prompt box.
function loraBridgeSendToTxt2img(name, weight) {
    if (!String(name || "").trim()) {
        return [name, weight];
    }
    var tag = loraBridgeLoraTag(name, weight);
    var prompt = loraBridgeRoot().querySelector("#txt2img_prompt textarea");
    if (prompt) {
        var text = prompt.value.trim();
        if (text.indexOf(tag) < 0) {
            prompt.value = text ? text + " " + tag : tag;
            if (typeof updateInput === "function") {
                updateInput(prompt);
            } else {
                prompt.dispatchEvent(new Event("input", {bubbles: true}));
            }
        }
        if (typeof switch_to_txt2img === "function") {
            switch_to_txt2img();
        }
    } else if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(tag).catch(function() {});
    }
    return [name, weight];
}

// Re-render the Lora cards of txt2img and img2img (A1111 1.10's hidden refresh buttons).
function loraBridgeRefreshCards() {
    ["txt2img", "img2img"].forEach(function(tab) {
        var button = loraBridgeRoot().querySelector("#" + tab + "_lora_extra_refresh_internal");
        if (button) {
            button.dispatchEvent(new Event("click"));
        }
    });
}

// gradio 3.x (A1111): refresh the tab once a second while it is on screen. The hidden button exists
// only there (gradio 4+ polls with gr.Timer); a hidden browser tab or another WebUI tab sends nothing.
function loraBridgePollTick() {
    var root = loraBridgeRoot();
    var button = root.querySelector("#lora_bridge_poll");
    if (!button || document.visibilityState !== "visible") {
        return;
    }
    var tab = root.querySelector("#tab_lora_training");  // the WebUI's tab; absent standalone
    if (tab && tab.offsetParent === null) {
        return;
    }
    button.click();
}

if (!window.loraBridgePollTimer) {
    window.loraBridgePollTimer = setInterval(loraBridgePollTick, 1000);
}

window.loraBridgeLoraTag = loraBridgeLoraTag;
window.loraBridgeSendToTxt2img = loraBridgeSendToTxt2img;
window.loraBridgeRefreshCards = loraBridgeRefreshCards;
