package provision

import (
	"encoding/json"
	"strconv"
	"strings"
)

// tracker follows ansible-playbook's default output to name the task that
// failed.
type tracker struct {
	task string
	// failedTask and failedMsg are the last failure not ignored.
	failedTask, failedMsg string
	// pending is a failure that "...ignoring" may still cancel.
	pendingTask, pendingMsg string
	pending                 bool
	errLines                []string
}

const maxMsg = 400

func (t *tracker) feed(line string) {
	s := strings.TrimSpace(line)
	switch {
	case strings.HasPrefix(s, "TASK [") || strings.HasPrefix(s, "RUNNING HANDLER ["):
		t.commit()
		if i, j := strings.IndexByte(s, '['), strings.LastIndexByte(s, ']'); i >= 0 && j > i {
			t.task = s[i+1 : j]
		}
	case strings.HasPrefix(s, "PLAY [") || strings.HasPrefix(s, "PLAY RECAP"):
		t.commit()
	case strings.HasPrefix(s, "...ignoring"):
		t.pending = false
	case strings.HasPrefix(s, "fatal: [") || strings.HasPrefix(s, "failed: ["):
		if t.pending && strings.HasPrefix(s, "fatal: [") && t.pendingMsg != "" && t.pendingTask == t.task {
			// A loop prints "failed: (item=...)" per item and then one
			// "fatal:" summary: keep the item's message, it says more.
			if m := resultMsg(s); m != "" && !strings.Contains(m, "items failed") && !strings.Contains(m, "All items completed") {
				t.pendingMsg = m
			}
			return
		}
		t.pending, t.pendingTask, t.pendingMsg = true, t.task, resultMsg(s)
	case strings.HasPrefix(s, "ERROR!") || strings.HasPrefix(s, "ERROR:"):
		t.errLines = append(t.errLines, s)
	default:
		if len(t.errLines) > 0 && len(t.errLines) < 4 && s != "" {
			t.errLines = append(t.errLines, s)
		}
	}
}

func (t *tracker) commit() {
	if t.pending {
		t.failedTask, t.failedMsg = t.pendingTask, t.pendingMsg
		t.pending = false
	}
}

// result is the failed task and its message, or ansible's ERROR! lines.
func (t *tracker) result() (task, msg string) {
	t.commit()
	if t.failedTask != "" || t.failedMsg != "" {
		return t.failedTask, t.failedMsg
	}
	return "", shorten(strings.Join(t.errLines, " "))
}

// resultMsg extracts the message of a "fatal: [host]: FAILED! => {json}"
// line: msg, plus the last line of stderr for a failed command.
func resultMsg(line string) string {
	i := strings.Index(line, "=> ")
	if i < 0 {
		return ""
	}
	raw := strings.TrimSpace(line[i+3:])
	var res map[string]any
	if err := json.Unmarshal([]byte(raw), &res); err != nil {
		return shorten(raw)
	}
	var parts []string
	if m, ok := res["msg"].(string); ok && m != "" {
		parts = append(parts, m)
	}
	if rc, ok := res["rc"].(float64); ok && rc != 0 {
		parts = append(parts, "rc="+strconv.Itoa(int(rc)))
	}
	if se, ok := res["stderr"].(string); ok {
		if l := lastLine(se); l != "" {
			parts = append(parts, l)
		}
	}
	return shorten(strings.Join(parts, ": "))
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n ")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}

func shorten(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxMsg {
		return s[:maxMsg] + "..."
	}
	return s
}
