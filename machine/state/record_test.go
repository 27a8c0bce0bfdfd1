package state

import (
	"reflect"
	"testing"
)

// TestStageRecordMatches: every field of StageRecord is a field of Record
// with the same name, type and JSON key, so that a stage reads what
// prepare wrote.
func TestStageRecordMatches(t *testing.T) {
	rec, st := reflect.TypeFor[Record](), reflect.TypeFor[StageRecord]()
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		rf, ok := rec.FieldByName(f.Name)
		if !ok {
			t.Errorf("StageRecord.%s is not a field of Record", f.Name)
			continue
		}
		if rf.Type != f.Type || rf.Tag.Get("json") != f.Tag.Get("json") {
			t.Errorf("StageRecord.%s is %s `json:%q`, Record's %s `json:%q`", f.Name, f.Type, f.Tag.Get("json"), rf.Type, rf.Tag.Get("json"))
		}
	}
}
