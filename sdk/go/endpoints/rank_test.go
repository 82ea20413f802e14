package endpoints

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// The shared ranking vectors: each runtime's order of its addresses is the
// server's.
func TestEachRankingIsTheVectors(t *testing.T) {
	document, err := os.ReadFile(filepath.Join("..", "..", "..", "conformance", "vectors", "ranking.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vectors struct {
		Cases []struct {
			RuntimeID string   `json:"runtime_id"`
			Endpoints []string `json:"endpoints"`
			Ranking   []string `json:"ranking"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(document, &vectors); err != nil {
		t.Fatal(err)
	}
	if len(vectors.Cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range vectors.Cases {
		if got := Rank(c.RuntimeID, c.Endpoints); !slices.Equal(got, c.Ranking) {
			t.Errorf("%s %v: %v, want %v", c.RuntimeID, c.Endpoints, got, c.Ranking)
		}
	}
}
