-- Argo CD health check for idplane's kinds (group idplane.dev): TelephonyHook,
-- EnrollmentPolicy, EmailProvider and EmailDomain share this one script, as
-- idplane decides each kind's states itself and writes them as kstatus
-- conditions (docs/health.md has the table):
--   no status for metadata.generation yet -> Progressing
--   Stalled=True      -> Degraded: nothing moves until the manifest (or a
--                        Secret, or DNS) changes
--   Reconciling=True  -> Progressing: a Secret to come, a verification under way
--   Ready=True        -> Healthy; Suspended when the spec switches the object
--                        off (reason Deactivated: an inactive policy, a
--                        disabled provider). A standby hook is Healthy.
-- Lua 5.1 (Argo CD runs gopher-lua): no integer division, goto or utf8.
local hs = {}

local function condition(type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

local function holds(c)
  return c ~= nil and c.status == "True"
end

-- "Reason: message", as kubectl describe shows a condition.
local function told(c)
  if c.message ~= nil and c.message ~= "" then
    return c.reason .. ": " .. c.message
  end
  return c.reason
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "waiting for idplane to report the status of this " .. obj.kind
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= generation then
  hs.status = "Progressing"
  hs.message = string.format(
    "waiting for idplane to observe generation %d (the status describes generation %d)",
    generation, observed)
  return hs
end

-- Stalled first: an object that is stuck is not shown as making progress.
for _, abnormal in ipairs({{"Stalled", "Degraded"}, {"Reconciling", "Progressing"}}) do
  local c = condition(abnormal[1])
  if holds(c) then
    hs.status = abnormal[2]
    hs.message = told(c)
    return hs
  end
end
local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "waiting for idplane to report Ready"
  return hs
end
if ready.status ~= "True" then
  -- As kstatus reads Ready=False without Stalled: not there yet.
  hs.status = "Progressing"
  hs.message = told(ready)
  return hs
end

if ready.reason == "Deactivated" then
  hs.status = "Suspended"
else
  hs.status = "Healthy"
end
hs.message = ready.message
-- Warnings that leave a policy healthy: no user can reach it, or the org
-- has no default policy.
local shadowed = condition("Shadowed")
if holds(shadowed) then
  hs.message = hs.message .. "; warning: " .. shadowed.message
end
local default = condition("DefaultPolicy")
if default ~= nil and default.status == "False" then
  hs.message = hs.message .. "; warning: " .. default.message
end
return hs
