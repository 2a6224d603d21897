// Prefill a credential's base URL with its provider's default root when the operator picks
// a provider and the field is empty or still holds another provider's default.
document.addEventListener("DOMContentLoaded", function () {
  var provider = document.getElementById("id_provider");
  var baseUrl = document.getElementById("id_base_url");
  if (!provider || !baseUrl) { return; }
  var defaults = JSON.parse(baseUrl.dataset.defaults || "{}");
  var known = Object.values(defaults);
  function fill() {
    var wanted = defaults[provider.value] || "";
    if (baseUrl.value === "" || known.indexOf(baseUrl.value) !== -1) { baseUrl.value = wanted; }
    baseUrl.placeholder = wanted || "required for this provider";
  }
  provider.addEventListener("change", fill);
  if (baseUrl.value === "") { fill(); }
});
